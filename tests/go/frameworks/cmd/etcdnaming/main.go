// Command etcdnaming registers a grpc-go server (standard health service) the way etcd's own gRPC
// resolver expects: go.etcd.io/etcd/client/v3/naming/endpoints, Manager.AddEndpoint with the key
// "{target}/{id}" (the package documentation's form is "{service}/{addr}", so --id defaults to
// the advertised address) under a lease kept alive by the etcd client. On SIGTERM/SIGINT it
// deletes the endpoint with Manager.DeleteEndpoint and revokes the lease.
//
// The format has no version and no weight. Endpoint.Metadata is free-form ("any"): with
// --version or --weight the registrar puts {"version":...,"weight":...} there (a convention of
// this test bed, not of etcd); --metadata sets any JSON instead. Without them it is null, as in
// the package's own examples.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"time"

	"etcd-bridge.io/tests/frameworks/internal/registrar"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
)

func main() {
	f := registrar.CommonFlags()
	target := flag.String("target", "", "resolver target, the key prefix before '/' (default: --name); a client dials etcd:///TARGET")
	ttl := flag.Int64("ttl", 10, "lease TTL in seconds")
	metadata := flag.String("metadata", "", "Endpoint.Metadata as raw JSON (overrides --version/--weight)")
	flag.Parse()
	f.Check()
	if *target == "" {
		*target = f.Name
	}

	srv := registrar.NewHealthServer(f.Name)
	addr := registrar.Serve(srv, f.Listen)
	advertise := f.AdvertiseOr(addr.String())
	id := f.ID
	if id == "" {
		id = advertise
	}

	var md any
	switch {
	case *metadata != "":
		if err := json.Unmarshal([]byte(*metadata), &md); err != nil {
			log.Fatalf("--metadata is not JSON: %v", err)
		}
	case f.Version != "" || f.Weight != 0:
		m := map[string]any{}
		if f.Version != "" {
			m["version"] = f.Version
		}
		if f.Weight != 0 {
			m["weight"] = f.Weight
		}
		md = m
	}

	cli := registrar.Client(f)
	em, err := endpoints.NewManager(cli, *target)
	if err != nil {
		log.Fatalf("endpoints manager: %v", err)
	}
	ctx := context.Background()
	lease, err := cli.Grant(ctx, *ttl)
	if err != nil {
		log.Fatalf("grant lease: %v", err)
	}
	key := *target + "/" + id
	if err := em.AddEndpoint(ctx, key, endpoints.Endpoint{Addr: advertise, Metadata: md}, clientv3.WithLease(lease.ID)); err != nil {
		log.Fatalf("AddEndpoint %s: %v", key, err)
	}
	ka, err := cli.KeepAlive(ctx, lease.ID)
	if err != nil {
		log.Fatalf("keepalive: %v", err)
	}
	go func() {
		for range ka {
		}
		log.Printf("keepalive of lease %x ended", lease.ID)
	}()
	registrar.Registered(cli, key)

	<-registrar.Signals()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := em.DeleteEndpoint(dctx, key); err != nil {
		log.Printf("DeleteEndpoint %s: %v", key, err)
	}
	if _, err := cli.Revoke(dctx, lease.ID); err != nil {
		log.Printf("revoke: %v", err)
	}
	srv.GracefulStop()
	registrar.Deregistered(cli, key)
}
