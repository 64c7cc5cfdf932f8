package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// portSet is saved in the state folder so a restart on the same folder comes
// back on the same addresses (clients keep their kubeconfig, etcd its peer URL).
type portSet struct {
	APIServer  int `json:"apiserver"`
	EtcdClient int `json:"etcdClient"`
	EtcdPeer   int `json:"etcdPeer"`
}

func loadOrPickPorts(path string, apiserver int) (portSet, error) {
	var p portSet
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &p); err != nil {
			return p, fmt.Errorf("%s: %w", path, err)
		}
	case errors.Is(err, os.ErrNotExist):
		if p.EtcdClient, err = freePort(); err != nil {
			return p, err
		}
		if p.EtcdPeer, err = freePort(); err != nil {
			return p, err
		}
	default:
		return p, err
	}
	if apiserver != 0 {
		p.APIServer = apiserver
	}
	if p.APIServer == 0 {
		if p.APIServer, err = freePort(); err != nil {
			return p, err
		}
	}
	out, _ := json.Marshal(p)
	return p, os.WriteFile(path, out, 0o600)
}

// freePort returns a port on 127.0.0.1 that nothing listens on, picked below
// the kernel's ephemeral range. A port from binding ":0" is ephemeral: until
// the apiserver binds it (after etcd is up), any outgoing connection, ours or
// a parallel test's, may take it as its local port ("address already in use").
func freePort() (int, error) {
	low := ephemeralLow()
	for range 100 {
		port := low/2 + rand.IntN(low-low/2)
		if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			l.Close()
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port in %d-%d on 127.0.0.1", low/2, low-1)
}

// ephemeralLow is the first port the kernel hands out for outgoing
// connections and ":0" (Linux's default when the setting cannot be read).
func ephemeralLow() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if fields := strings.Fields(string(data)); len(fields) == 2 {
			if low, err := strconv.Atoi(fields[0]); err == nil && low >= 2048 {
				return low
			}
		}
	}
	return 32768
}
