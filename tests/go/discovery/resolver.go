package discovery

import (
	"context"
	"log"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/resolver"
)

// Scheme is the resolver's URL scheme, as in the seed.
const Scheme = "etcd"

// Builder is a resolver.Builder for targets etcd://{version}/{name} (etcd:///{name} for every
// version): the target's endpoint is the service name and its authority the version, as the
// seed reads them. Each resolver lists {root}{name}/[{version}/] and then watches it.
type Builder struct {
	Endpoints []string
	Root      string
	// Timeout bounds connecting to etcd and the initial list (the seed's DialTimeout).
	Timeout time.Duration
	// Resync is the period of a full re-list (the seed's one-minute ticker).
	Resync time.Duration
}

// Scheme implements resolver.Builder.
func (b *Builder) Scheme() string { return Scheme }

// Build implements resolver.Builder.
func (b *Builder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	timeout := b.Timeout
	if timeout == 0 {
		timeout = 3 * time.Second
	}
	resync := b.Resync
	if resync == 0 {
		resync = time.Minute
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: b.Endpoints, DialTimeout: timeout})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &etcdResolver{
		cli:     cli,
		cc:      cc,
		prefix:  Prefix(b.Root, Server{Name: target.Endpoint(), Version: target.URL.Host}),
		timeout: timeout,
		cancel:  cancel,
		done:    make(chan struct{}),
	}
	rev, err := r.sync()
	if err != nil {
		cancel()
		cli.Close()
		return nil, err
	}
	go r.watch(ctx, rev, resync)
	return r, nil
}

type etcdResolver struct {
	cli     *clientv3.Client
	cc      resolver.ClientConn
	prefix  string
	timeout time.Duration
	cancel  context.CancelFunc
	done    chan struct{}

	mu    sync.Mutex
	addrs []resolver.Address
}

func address(s Server) resolver.Address {
	// The seed carries the weight in the (now deprecated) Metadata field; Attributes is its
	// successor. Nothing here balances by weight: the test only needs the addresses.
	return resolver.Address{Addr: s.Addr, Attributes: attributes.New("weight", s.Weight)}
}

func index(list []resolver.Address, addr string) int {
	for i, a := range list {
		if a.Addr == addr {
			return i
		}
	}
	return -1
}

// sync lists the prefix and replaces the address list; returns the revision it read at.
func (r *etcdResolver) sync() (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	resp, err := r.cli.Get(ctx, r.prefix, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	list := []resolver.Address{}
	for _, kv := range resp.Kvs {
		s, err := ParseValue(kv.Value)
		if err != nil {
			continue
		}
		list = append(list, address(s))
	}
	r.mu.Lock()
	r.addrs = list
	r.mu.Unlock()
	r.publish("list")
	return resp.Header.Revision, nil
}

func (r *etcdResolver) publish(why string) {
	r.mu.Lock()
	list := append([]resolver.Address(nil), r.addrs...)
	r.mu.Unlock()
	names := make([]string, len(list))
	for i, a := range list {
		names[i] = a.Addr
	}
	log.Printf("resolver %s (%s): %v", r.prefix, why, names)
	// An empty list is refused by some balancers; the next update fixes it.
	_ = r.cc.UpdateState(resolver.State{Addresses: list})
}

func (r *etcdResolver) watch(ctx context.Context, rev int64, resync time.Duration) {
	defer close(r.done)
	ticker := time.NewTicker(resync)
	defer ticker.Stop()
	// The seed starts watching at "now"; starting right after the list's revision loses nothing
	// in between.
	events := r.cli.Watch(ctx, r.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		select {
		case <-ctx.Done():
			return
		case resp, ok := <-events:
			if !ok {
				// Closed (compaction, or ctx): re-list and watch again.
				if ctx.Err() != nil {
					return
				}
				if rev, err := r.sync(); err == nil {
					events = r.cli.Watch(ctx, r.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
				} else {
					time.Sleep(time.Second)
				}
				continue
			}
			r.update(resp.Events)
		case <-ticker.C:
			if _, err := r.sync(); err != nil {
				log.Printf("resolver %s: resync failed: %v", r.prefix, err)
			}
		}
	}
}

func (r *etcdResolver) update(events []*clientv3.Event) {
	for _, ev := range events {
		switch ev.Type {
		case mvccpb.PUT:
			s, err := ParseValue(ev.Kv.Value)
			if err != nil {
				continue
			}
			r.mu.Lock()
			// As in the seed: an address already known is kept as it is.
			added := index(r.addrs, s.Addr) < 0
			if added {
				r.addrs = append(r.addrs, address(s))
			}
			r.mu.Unlock()
			if added {
				r.publish("put")
			}
		case mvccpb.DELETE:
			addr, err := AddrOfKey(string(ev.Kv.Key))
			if err != nil {
				continue
			}
			r.mu.Lock()
			i := index(r.addrs, addr)
			if i >= 0 {
				r.addrs = append(r.addrs[:i:i], r.addrs[i+1:]...)
			}
			r.mu.Unlock()
			if i >= 0 {
				r.publish("delete")
			}
		}
	}
}

// ResolveNow implements resolver.Resolver; the watch keeps the list current.
func (r *etcdResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close implements resolver.Resolver.
func (r *etcdResolver) Close() {
	r.cancel()
	<-r.done
	r.cli.Close()
}
