// Command healthserver serves only the standard gRPC health service (grpc.health.v1), for the
// health-check tests: the bridge probes it. It starts SERVING; SIGUSR1 sets it NOT_SERVING and
// SIGUSR2 SERVING again, for the whole server ("") and for -service if given. SIGTERM or SIGINT
// stops it. With -no-watch it answers Health/Watch with UNIMPLEMENTED, like a server whose health
// service has only Check.
//
// It prints "serving on ADDR" once it listens and "status STATUS" after each change. The tests
// run it inside a network namespace of their own (`ip netns exec`), listening on an address they
// assigned there, so probes never leave the machine.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// checkOnly is the standard health server without Watch.
type checkOnly struct {
	*health.Server
}

func (checkOnly) Watch(*healthpb.HealthCheckRequest, healthpb.Health_WatchServer) error {
	return status.Error(codes.Unimplemented, "this server implements only Check")
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	service := flag.String("service", "", "a health service name to set too, besides the whole server")
	noWatch := flag.Bool("no-watch", false, "answer Health/Watch with UNIMPLEMENTED")
	flag.Parse()
	log.SetFlags(log.Lmicroseconds)

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen on %s: %v", *listen, err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	set := func(status healthpb.HealthCheckResponse_ServingStatus) {
		hs.SetServingStatus("", status)
		if *service != "" {
			hs.SetServingStatus(*service, status)
		}
		fmt.Printf("status %s\n", status)
	}
	set(healthpb.HealthCheckResponse_SERVING)
	if *noWatch {
		healthpb.RegisterHealthServer(srv, checkOnly{hs})
	} else {
		healthpb.RegisterHealthServer(srv, hs)
	}
	go func() {
		if err := srv.Serve(lis); err != nil {
			log.Fatalf("serve: %v", err)
		}
	}()
	fmt.Printf("serving on %s\n", lis.Addr())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTERM, syscall.SIGINT)
	for s := range sig {
		switch s {
		case syscall.SIGUSR1:
			set(healthpb.HealthCheckResponse_NOT_SERVING)
		case syscall.SIGUSR2:
			set(healthpb.HealthCheckResponse_SERVING)
		default:
			log.Printf("%s: stopping", s)
			srv.Stop()
			return
		}
	}
}
