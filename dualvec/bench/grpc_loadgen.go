// grpc_loadgen: closed-loop load on one unary gRPC method, from a compiled client.
//
// scripts/bench.py measures the server's throughput with it when a Go toolchain and Debian's grpc-go sources
// are on the machine (apt-get install golang-go golang-google-grpc-dev; scripts/bench_load.py builds it), so that
// the load generator takes little of the CPUs the server runs on: Python clients spend 0.2-0.4 ms of CPU per call.
//
// Requests are serialized ahead of time by the caller (any protobuf message, so no generated Go code is needed):
// the file given with -requests holds them back to back, each preceded by its length as a uvarint. Each of the
// -clients goroutines has its own connection and sends the next request (cycling through the file from its own
// offset) as soon as the answer to the previous one is back. One OS thread runs them all by default (-procs):
// measured against two, it spent 15 % less CPU per call and left the server more. Calls that start and end
// inside the measured window (after -warmup, for -duration seconds) are counted. Prints one JSON object: throughput, latency percentiles,
// errors by status code, and the CPU time this process used during the window.
//
//	grpc_loadgen -addr 127.0.0.1:50051 -method /dualvec.v1.DualVec/Search -requests reqs.bin -clients 32
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// codeNames spells status codes as gRPC Python does (grpc.StatusCode names), so both load generators agree.
var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN", codes.InvalidArgument: "INVALID_ARGUMENT",
	codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED", codes.OutOfRange: "OUT_OF_RANGE",
	codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE",
	codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
}

func codeName(err error) string {
	code := status.Code(err)
	if name, ok := codeNames[code]; ok {
		return name
	}
	return code.String()
}

// rawCodec sends and receives serialized messages as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	out := v.(*[]byte)
	*out = append((*out)[:0], data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

type clientResult struct {
	calls     int
	latencies []float64 // microseconds
	errors    map[string]int
}

func readRequests(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := bufio.NewReader(f)
	var out [][]byte
	for {
		n, err := binary.ReadUvarint(r)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: bad length prefix after %d requests: %v", path, len(out), err)
		}
		msg := make([]byte, n)
		if _, err := io.ReadFull(r, msg); err != nil {
			return nil, fmt.Errorf("%s: request %d is cut short: %v", path, len(out), err)
		}
		out = append(out, msg)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no requests", path)
	}
	return out, nil
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p / 100 * float64(len(sorted)-1))
	return sorted[i]
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "grpc_loadgen: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "server address")
	method := flag.String("method", "/dualvec.v1.DualVec/Search", "full method name")
	reqPath := flag.String("requests", "", "file of uvarint-length-prefixed serialized requests")
	clients := flag.Int("clients", 32, "concurrent closed-loop clients, one connection each")
	duration := flag.Float64("duration", 10, "seconds measured")
	warmup := flag.Float64("warmup", 1, "seconds before the measured window")
	timeout := flag.Float64("timeout", 30, "deadline of each call, seconds")
	procs := flag.Int("procs", 1, "OS threads running the clients (GOMAXPROCS); one costs the least CPU per call")
	flag.Parse()
	runtime.GOMAXPROCS(*procs)
	if *reqPath == "" || *clients < 1 || *duration <= 0 {
		fail("need -requests FILE, -clients >= 1 and -duration > 0")
	}
	requests, err := readRequests(*reqPath)
	if err != nil {
		fail("%v", err)
	}

	conns := make([]*grpc.ClientConn, *clients)
	for i := range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		// WithBlock: every connection is up before the clock starts
		conns[i], err = grpc.DialContext(ctx, *addr, grpc.WithInsecure(), grpc.WithBlock(),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		cancel()
		if err != nil {
			fail("cannot connect to %s: %v", *addr, err)
		}
		defer conns[i].Close()
	}

	begin := time.Now()
	start := begin.Add(time.Duration(*warmup * float64(time.Second)))
	stop := start.Add(time.Duration(*duration * float64(time.Second)))
	callTimeout := time.Duration(*timeout * float64(time.Second))
	results := make([]clientResult, *clients)
	var cpuStart float64
	var cpuOnce sync.Once
	var wg sync.WaitGroup
	for c := 0; c < *clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			res := clientResult{errors: map[string]int{}}
			conn := conns[c]
			i := c * 104729
			var reply []byte
			for {
				t0 := time.Now()
				if !t0.Before(stop) {
					break
				}
				if !t0.Before(start) {
					cpuOnce.Do(func() { cpuStart = cpuSeconds() })
				}
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				req := requests[i%len(requests)]
				err := conn.Invoke(ctx, *method, &req, &reply)
				cancel()
				t1 := time.Now()
				i++
				ok := err == nil
				if err != nil {
					res.errors[codeName(err)]++
				} else if len(reply) == 0 {
					res.errors["EMPTY_ANSWER"]++
					ok = false
				}
				if ok && !t0.Before(start) && !t1.After(stop) {
					res.calls++
					res.latencies = append(res.latencies, float64(t1.Sub(t0).Nanoseconds())/1e3)
				}
			}
			results[c] = res
		}(c)
	}
	wg.Wait()
	cpuUsed := cpuSeconds() - cpuStart

	total := 0
	var lat []float64
	errors := map[string]int{}
	for _, r := range results {
		total += r.calls
		lat = append(lat, r.latencies...)
		for k, v := range r.errors {
			errors[k] += v
		}
	}
	sort.Float64s(lat)
	out := map[string]interface{}{
		"clients": *clients, "connections": *clients, "seconds": *duration, "queries": total,
		"qps": float64(total) / *duration, "errors": errors, "client_cpu_seconds": cpuUsed,
		"client_cpu_us_per_call": 0.0, "load_generator": "grpc_loadgen (Go, grpc-go " + grpc.Version + ")",
	}
	if total > 0 {
		out["p50_us"] = percentile(lat, 50)
		out["p99_us"] = percentile(lat, 99)
		out["client_cpu_us_per_call"] = cpuUsed * 1e6 / float64(total)
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fail("%v", err)
	}
}
