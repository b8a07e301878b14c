// Command kratos runs a kratos application whose gRPC transport (kratos transport/grpc, a grpc-go
// server that serves the standard health service itself) is registered by
// github.com/go-kratos/kratos/contrib/registry/etcd/v2: the key is "{namespace}/{name}/{id}"
// (namespace "/microservices" unless --namespace; id a UUID unless --id) and the value the JSON
// of registry.ServiceInstance {id,name,version,metadata,endpoints}. The App registers after its
// servers start and deregisters (deletes the key) on SIGTERM/SIGINT, its own signal handling.
//
// --advertise sets the gRPC server's endpoint (kratos grpc.Endpoint), "grpc://ADVERTISE".
// --http-listen adds a kratos HTTP server, listed first, so the instance carries two schemes:
// its endpoint is "http://" + --advertise-http (default: its listen address).
// --weight goes into metadata["weight"], where kratos' selector reads it.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/url"
	"strconv"
	"time"

	"etcd-bridge.io/tests/frameworks/internal/registrar"
	etcdreg "github.com/go-kratos/kratos/contrib/registry/etcd/v2"
	"github.com/go-kratos/kratos/v2"
	"github.com/go-kratos/kratos/v2/transport"
	kgrpc "github.com/go-kratos/kratos/v2/transport/grpc"
	khttp "github.com/go-kratos/kratos/v2/transport/http"
)

func main() {
	f := registrar.CommonFlags()
	namespace := flag.String("namespace", "/microservices", "kratos etcd registry namespace")
	ttl := flag.Duration("ttl", 15*time.Second, "lease TTL (kratos' default 15s)")
	httpListen := flag.String("http-listen", "", "also run a kratos HTTP server listening here")
	advertiseHTTP := flag.String("advertise-http", "", "host:port registered for the HTTP server (default: its listen address)")
	flag.Parse()
	f.Check()

	// Our own listener, so the address is known before the App starts; Address still tells kratos
	// which host to put in its default endpoint.
	lis, err := net.Listen("tcp", f.Listen)
	if err != nil {
		log.Fatalf("listen on %s: %v", f.Listen, err)
	}
	gopts := []kgrpc.ServerOption{kgrpc.Address(f.Listen), kgrpc.Listener(lis)}
	if f.Advertise != "" {
		gopts = append(gopts, kgrpc.Endpoint(&url.URL{Scheme: "grpc", Host: f.Advertise}))
	}
	gs := kgrpc.NewServer(gopts...)
	servers := []transport.Server{gs}
	if *httpListen != "" {
		hopts := []khttp.ServerOption{khttp.Address(*httpListen)}
		if *advertiseHTTP != "" {
			hopts = append(hopts, khttp.Endpoint(&url.URL{Scheme: "http", Host: *advertiseHTTP}))
		}
		servers = append([]transport.Server{khttp.NewServer(hopts...)}, servers...)
	}
	registrar.Serving(lis.Addr().String())

	var md map[string]string
	if f.Weight != 0 {
		md = map[string]string{"weight": strconv.Itoa(f.Weight)}
	}
	cli := registrar.Client(f)
	reg := etcdreg.New(cli, etcdreg.Namespace(*namespace), etcdreg.RegisterTTL(*ttl))

	var key string
	opts := []kratos.Option{
		kratos.Name(f.Name),
		kratos.Version(f.Version),
		kratos.Metadata(md),
		kratos.Server(servers...),
		kratos.Registrar(reg),
		kratos.AfterStart(func(ctx context.Context) error {
			app, _ := kratos.FromContext(ctx)
			key = *namespace + "/" + f.Name + "/" + app.ID()
			registrar.Registered(cli, key)
			return nil
		}),
	}
	if f.ID != "" {
		opts = append(opts, kratos.ID(f.ID))
	}
	app := kratos.New(opts...)
	if err := app.Run(); err != nil {
		log.Fatalf("kratos app: %v", err)
	}
	registrar.Deregistered(cli, key)
}
