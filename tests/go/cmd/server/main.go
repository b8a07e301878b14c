// Command server is a gRPC server of the seed's kind: it serves the standard health service on
// -listen and, with -register (the default), registers itself in etcd the way the seed's
// Register does. On SIGTERM or SIGINT it unregisters (deletes its key, revokes its lease) and
// exits 0.
//
// It prints "serving on ADDR" once it listens and "registered KEY lease ID" once registered.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"etcd-bridge.io/tests/seedgo/discovery"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	endpoints := flag.String("endpoints", "http://127.0.0.1:2379", "etcd client URLs, comma-separated")
	root := flag.String("root", "/", "key prefix to register under (ends with /)")
	name := flag.String("name", "", "service name")
	version := flag.String("version", "", "service version (may be empty)")
	listen := flag.String("listen", "127.0.0.1:0", "address the gRPC server listens on")
	addr := flag.String("addr", "", "address to register (default: the listen address)")
	weight := flag.Int64("weight", 1, "weight to register")
	ttl := flag.Int64("ttl", 10, "lease TTL in seconds")
	register := flag.Bool("register", true, "register in etcd")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)
	log.SetOutput(os.Stderr)

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen on %s: %v", *listen, err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go func() {
		if err := srv.Serve(lis); err != nil {
			log.Fatalf("serve: %v", err)
		}
	}()
	fmt.Printf("serving on %s\n", lis.Addr())

	var reg *discovery.Register
	if *register {
		if *name == "" {
			log.Fatal("-name is required with -register")
		}
		if *addr == "" {
			*addr = lis.Addr().String()
		}
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:   strings.Split(*endpoints, ","),
			DialTimeout: 3 * time.Second,
		})
		if err != nil {
			log.Fatalf("etcd client: %v", err)
		}
		defer cli.Close()
		reg = &discovery.Register{
			Client: cli,
			Root:   *root,
			Info:   discovery.Server{Name: *name, Addr: *addr, Version: *version, Weight: *weight},
			TTL:    *ttl,
		}
		if err := reg.Start(); err != nil {
			log.Fatalf("register %s: %v", reg.Key(), err)
		}
		fmt.Printf("registered %s lease %x\n", reg.Key(), int64(reg.Lease()))
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	s := <-sig
	log.Printf("%s: shutting down", s)
	if reg != nil {
		reg.Stop()
		fmt.Printf("unregistered %s\n", reg.Key())
	}
	hs.Shutdown()
	srv.GracefulStop()
	fmt.Println("stopped")
}
