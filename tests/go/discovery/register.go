package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"log"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Register keeps one Server registered, the way the seed's Register does: a lease of TTL
// seconds, kept alive; the key put under it; a new lease and a new put whenever the keepalive
// stream ends; and, on Stop, the key deleted and the lease revoked.
type Register struct {
	Client *clientv3.Client
	Root   string
	Info   Server
	TTL    int64
	// Timeout bounds the lease grant (the seed's DialTimeout).
	Timeout time.Duration

	mu        sync.Mutex
	lease     clientv3.LeaseID
	keepAlive <-chan *clientv3.LeaseKeepAliveResponse
	stop      chan struct{}
	done      chan struct{}
}

// Start registers and keeps the registration alive until Stop.
func (r *Register) Start() error {
	// The seed refuses an address without a host part.
	if strings.Split(r.Info.Addr, ":")[0] == "" {
		return errors.New("invalid ip")
	}
	if r.Timeout == 0 {
		r.Timeout = 3 * time.Second
	}
	if err := r.register(); err != nil {
		return err
	}
	r.stop = make(chan struct{})
	r.done = make(chan struct{})
	go r.loop()
	return nil
}

// Key is the registered key.
func (r *Register) Key() string { return Key(r.Root, r.Info) }

// Lease is the current lease.
func (r *Register) Lease() clientv3.LeaseID {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lease
}

func (r *Register) register() error {
	ctx, cancel := context.WithTimeout(context.Background(), r.Timeout)
	defer cancel()
	grant, err := r.Client.Grant(ctx, r.TTL)
	if err != nil {
		return err
	}
	ch, err := r.Client.KeepAlive(context.Background(), grant.ID)
	if err != nil {
		return err
	}
	value, err := json.Marshal(r.Info)
	if err != nil {
		return err
	}
	if _, err := r.Client.Put(context.Background(), r.Key(), string(value), clientv3.WithLease(grant.ID)); err != nil {
		return err
	}
	r.mu.Lock()
	r.lease, r.keepAlive = grant.ID, ch
	r.mu.Unlock()
	return nil
}

func (r *Register) loop() {
	defer close(r.done)
	ticker := time.NewTicker(time.Duration(r.TTL) * time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-r.stop:
			if _, err := r.Client.Delete(context.Background(), r.Key()); err != nil {
				log.Printf("unregister failed: %v", err)
			}
			if _, err := r.Client.Revoke(context.Background(), r.Lease()); err != nil {
				log.Printf("revoke failed: %v", err)
			}
			return
		case resp, ok := <-r.keepAlive:
			if !ok || resp == nil {
				// The keepalive stream ended (lease lost, etcd gone): register again.
				r.keepAlive = nil
				if err := r.register(); err != nil {
					log.Printf("register again failed: %v", err)
				}
			}
		case <-ticker.C:
			if r.keepAlive == nil {
				if err := r.register(); err != nil {
					log.Printf("register again failed: %v", err)
				}
			}
		}
	}
}

// Stop deletes the key, revokes the lease, and returns when both are done.
func (r *Register) Stop() {
	close(r.stop)
	<-r.done
}
