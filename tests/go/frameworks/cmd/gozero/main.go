// Command gozero registers a grpc-go server (standard health service) the way a go-zero zrpc
// server does: github.com/zeromicro/go-zero/core/discov.NewPublisher(hosts, key, value) and
// Publisher.KeepAlive, exactly what zrpc/internal/rpcpubserver.go calls. The value is the plain
// "host:port"; the key is "{key}/{id}", id being the lease id in decimal unless --id (zrpc's
// Etcd.ID) is given. On SIGTERM/SIGINT it calls Publisher.Stop, which revokes the lease (go-zero's
// own signal handler does the same).
//
// zrpc itself publishes its ListenOn address (or POD_IP for 0.0.0.0); this registrar publishes
// --advertise instead so a test can register an address other than the one it listens on.
// The format has no version and no weight.
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"strconv"
	"time"

	"etcd-bridge.io/tests/frameworks/internal/registrar"
	"github.com/zeromicro/go-zero/core/discov"
	"github.com/zeromicro/go-zero/core/logx"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func main() {
	f := registrar.CommonFlags()
	key := flag.String("key", "", "go-zero Etcd.Key (default: --name), e.g. greeter.rpc")
	flag.Parse()
	f.Check()
	f.Ignored("go-zero", true, true)
	if *key == "" {
		*key = f.Name
	}
	// go-zero logs to stdout by default; stdout carries this program's protocol.
	logx.SetWriter(logx.NewWriter(os.Stderr))
	logx.DisableStat()

	srv := registrar.NewHealthServer(f.Name)
	addr := registrar.Serve(srv, f.Listen)
	advertise := f.AdvertiseOr(addr.String())

	var opts []discov.PubOption
	if f.ID != "" {
		id, err := strconv.ParseInt(f.ID, 10, 64)
		if err != nil || id <= 0 {
			log.Fatalf("--id must be a positive integer for go-zero (Etcd.ID is an int64): %q", f.ID)
		}
		opts = append(opts, discov.WithId(id))
	}
	pub := discov.NewPublisher(f.EndpointList(), *key, advertise, opts...)
	if err := pub.KeepAlive(); err != nil {
		log.Fatalf("go-zero publisher: %v", err)
	}

	// The full key (with the lease id) is private to the Publisher: find the key under
	// "{key}/" holding our value, the newest if several.
	cli := registrar.Client(f)
	full := findKey(cli, *key+"/", advertise)
	registrar.Registered(cli, full)

	<-registrar.Signals()
	pub.Stop()
	srv.GracefulStop()
	registrar.Deregistered(cli, full)
}

func findKey(cli *clientv3.Client, prefix, value string) string {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
		cancel()
		if err == nil {
			var best string
			var rev int64
			for _, kv := range resp.Kvs {
				if string(kv.Value) == value && kv.CreateRevision > rev {
					best, rev = string(kv.Key), kv.CreateRevision
				}
			}
			if best != "" {
				return best
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Fatalf("no key under %s holds %s: go-zero did not register", prefix, value)
	return ""
}
