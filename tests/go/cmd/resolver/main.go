// Command resolver is a gRPC client of the seed's kind: it resolves etcd://{version}/{name}
// through the etcd resolver of package discovery and calls the standard health check
// (grpc.health.v1.Health/Check) until it succeeds or -timeout runs out. On success it prints
// "reached ADDR" (the peer the call went to) and exits 0; otherwise it exits 1.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"strings"
	"time"

	"etcd-bridge.io/tests/seedgo/discovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

func main() {
	endpoints := flag.String("endpoints", "http://127.0.0.1:2379", "etcd client URLs, comma-separated")
	root := flag.String("root", "/", "key prefix the registrations live under (ends with /)")
	name := flag.String("name", "", "service name (the target's endpoint)")
	version := flag.String("version", "", "service version (the target's authority); empty resolves every version")
	timeout := flag.Duration("timeout", 30*time.Second, "give up after this long")
	attempt := flag.Duration("attempt-timeout", 2*time.Second, "timeout of one health check call")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	log.SetOutput(os.Stderr)
	if *name == "" {
		log.Fatal("-name is required")
	}

	// etcd://{version}/{name}, as the seed's clients dial: the resolver reads the name from the
	// target's endpoint and the version from its authority.
	target := (&url.URL{Scheme: discovery.Scheme, Host: *version, Path: "/" + *name}).String()
	builder := &discovery.Builder{Endpoints: strings.Split(*endpoints, ","), Root: *root}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(builder))
	if err != nil {
		log.Fatalf("dial %s: %v", target, err)
	}
	defer conn.Close()
	log.Printf("dialing %s (etcd %s, root %q)", target, *endpoints, *root)

	client := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(*timeout)
	for n := 1; ; n++ {
		ctx, cancel := context.WithTimeout(context.Background(), *attempt)
		var p peer.Peer
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true), grpc.Peer(&p))
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			fmt.Printf("reached %s: %s\n", p.Addr, resp.GetStatus())
			return
		}
		if err == nil {
			err = fmt.Errorf("status %s", resp.GetStatus())
		}
		log.Printf("attempt %d: %v", n, err)
		if time.Now().After(deadline) {
			fmt.Printf("no healthy server for %s after %s: %v\n", target, *timeout, err)
			os.Exit(1)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
