// Command kitex registers a grpc-go server (standard health service) with
// github.com/kitex-contrib/registry-etcd, calling its Register(info) with the registry.Info a
// kitex server would build (kitex server.buildRegistryInfo: weight 10 unless set, tags from the
// server's basic info). A kitex client with the gRPC transport (transport.GRPC) can call a
// grpc-go server, so this is a real kitex registration of a gRPC service; the kitex server itself
// is not run because it serves kitex protocols and needs generated kitex code for the health
// service.
//
// The key is "{prefix}/{service}/{host:port}" with prefix "kitex/registry-etcd" (no leading
// "/") unless --prefix; the value is {"network","address","weight","tags"}. The lease (60s, or
// KITEX_ETCD_REGISTRY_LEASE_TTL) is kept alive, and every 30s the registry re-puts the key if it
// vanished. On SIGTERM/SIGINT Deregister deletes the key. The format has no version.
package main

import (
	"flag"
	"log"
	"strings"
	"time"

	"etcd-bridge.io/tests/frameworks/internal/registrar"
	"github.com/cloudwego/kitex/pkg/discovery"
	"github.com/cloudwego/kitex/pkg/registry"
	"github.com/cloudwego/kitex/pkg/utils"
	etcdreg "github.com/kitex-contrib/registry-etcd"
)

func main() {
	f := registrar.CommonFlags()
	prefix := flag.String("prefix", "kitex/registry-etcd", "kitex-contrib/registry-etcd service prefix")
	tags := flag.String("tags", "", "tags, k=v,k=v (none: null, as a kitex server without tags)")
	flag.Parse()
	f.Check()
	f.Ignored("kitex", true, false)

	srv := registrar.NewHealthServer(f.Name)
	addr := registrar.Serve(srv, f.Listen)
	advertise := f.AdvertiseOr(addr.String())

	var tagMap map[string]string
	if *tags != "" {
		tagMap = map[string]string{}
		for _, kv := range strings.Split(*tags, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				log.Fatalf("--tags: %q is not k=v", kv)
			}
			tagMap[k] = v
		}
	}
	weight := f.Weight
	if weight == 0 {
		weight = discovery.DefaultWeight
	}
	reg, err := etcdreg.NewEtcdRegistry(f.EndpointList(), etcdreg.WithEtcdServicePrefix(*prefix))
	if err != nil {
		log.Fatalf("kitex etcd registry: %v", err)
	}
	// Addr is the advertised address: the registry builds the key from it, for Register and
	// Deregister alike (its SetFixedAddress changes only the former).
	info := &registry.Info{
		ServiceName:  f.Name,
		Addr:         utils.NewNetAddr("tcp", advertise),
		PayloadCodec: "protobuf",
		Weight:       weight,
		StartTime:    time.Now(),
		Tags:         tagMap,
	}
	if err := reg.Register(info); err != nil {
		log.Fatalf("kitex register: %v", err)
	}
	key := *prefix + "/" + f.Name + "/" + advertise
	cli := registrar.Client(f)
	registrar.Registered(cli, key)

	<-registrar.Signals()
	if err := reg.Deregister(info); err != nil {
		log.Printf("kitex deregister: %v", err)
	}
	srv.GracefulStop()
	registrar.Deregistered(cli, key)
}
