// Package discovery is a test double of the Go service-discovery code described in
// ../shared/seed/ (a Register and a gRPC Resolver on etcd): the format etcd-bridge
// interoperates with. It is written for the tests from that description, with one addition:
// the key root is a parameter (the seed hard-codes "/"), so that each test keeps to its prefix.
//
// A registration is the key {root}{name}/{version}/{addr} (or {root}{name}/{addr} without a
// version) holding json.Marshal(Server{...}) under a lease that the service keeps alive.
package discovery

import (
	"encoding/json"
	"errors"
	"strings"
)

// Server is the registered value, field for field as the seed marshals it.
type Server struct {
	Name    string `json:"name"`
	Addr    string `json:"addr"`
	Version string `json:"version"`
	Weight  int64  `json:"weight"`
}

// Prefix is what a resolver for (name, version) lists and watches:
// {root}{name}/{version}/, or {root}{name}/ when the version is empty.
func Prefix(root string, s Server) string {
	if s.Version == "" {
		return root + s.Name + "/"
	}
	return root + s.Name + "/" + s.Version + "/"
}

// Key is where s registers itself: Prefix followed by its address.
func Key(root string, s Server) string {
	return Prefix(root, s) + s.Addr
}

// ParseValue decodes a registered value. Unknown fields (etcd-bridge adds an owner marker)
// are ignored, as encoding/json does by default.
func ParseValue(v []byte) (Server, error) {
	var s Server
	if err := json.Unmarshal(v, &s); err != nil {
		return Server{}, err
	}
	return s, nil
}

// AddrOfKey is the address part of a key: its last path segment. A DELETE event carries no
// value, so this is all a resolver knows of what went away.
func AddrOfKey(key string) (string, error) {
	i := strings.LastIndexByte(key, '/')
	if i < 0 || i == len(key)-1 {
		return "", errors.New("no address in key " + key)
	}
	return key[i+1:], nil
}
