package main

import (
	"strings"
	"testing"
)

func TestReport(t *testing.T) {
	in := `goos: linux
BenchmarkHop/copy-8MiB-2    	    4845	    238736 ns/op	35137.59 MB/s
BenchmarkHop/shm-8MiB-2     	      24	  47545271 ns/op	 176.43 MB/s
BenchmarkZMQHop/raw-8MiB-2         	     300	   7240669 ns/op	1158.54 MB/s
BenchmarkZMQHop/zmq-8MiB-2         	     280	   7176842 ns/op	1168.84 MB/s
BenchmarkZMQHop/raw+curve-8MiB-2   	     100	  20971520 ns/op	 400.00 MB/s
BenchmarkZMQHop/curve-8MiB-2       	     100	  27962027 ns/op	 300.00 MB/s
BenchmarkCUDAHop2P/d2d-8MiB-2      	    9000	    100000 ns/op	83886.08 MB/s
BenchmarkCUDAHop2P/cuda-8MiB-2     	    3000	    200000 ns/op	41943.04 MB/s	         0.4500 x-d2d
BenchmarkRequest/steps-0-2  	     121	  19694419 ns/op	     18662 p50-µs	     34986 p99-µs	   2.512 minus-inproc-ms
BenchmarkThroughput/concurrency-8-2 	     175	  13706872 ns/op	        70.85 req/s	0.7100 ceiling-x-inproc	0.3500 x-inproc
BenchmarkHop2P/ideal-8MiB-2         	     200	    500000 ns/op	16777.22 MB/s
BenchmarkHop2P/shm-8MiB-2          	     200	   1000000 ns/op	8388.61 MB/s	         0.5000 x-copy
BenchmarkPythonHop/go-8MiB-2         	      20	   3050021 ns/op	2750.34 MB/s
BenchmarkPythonHop/py2py-8MiB-2      	      20	   4268038 ns/op	1965.45 MB/s
BenchmarkStatusSync-2   	     300	   1217636 ns/op	        15.31 floor-pipe-rtt	       555.0 p50-µs
PASS
`
	results, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 15 || results[1].name != "Hop/shm-8MiB" || results[1].metrics["MB/s"] != 176.43 {
		t.Fatalf("parsed %+v", results)
	}
	var b strings.Builder
	report(&b, results)
	for _, want := range []string{
		"Hop/shm-8MiB                         0.005 × copy      (176 vs 35138 MB/s)",
		"CUDAHop2P/cuda-8MiB                  0.500 × d2d",
		"ratios measured alternately with the baseline, iteration by iteration",
		"CUDAHop2P/cuda-8MiB                  0.450 × d2d",
		"ZMQHop/zmq-8MiB                      1.009 × raw       (1169 vs 1159 MB/s)",
		"ZMQHop/curve-8MiB                    0.257 × zmq       (300 vs 1169 MB/s)",
		"ZMQHop/curve-8MiB                    0.750 × raw+curve (300 vs 400 MB/s)",
		"ZMQHop/raw+curve-8MiB                0.345 × raw       (400 vs 1159 MB/s)",
		"Request/steps-0                          19.69 ms/op  p50-µs 18662.0  p99-µs 34986.0",
		"req/s 70.8",
		"PythonHop/py2py-8MiB                 0.715 × go        (1965 vs 2750 MB/s)",
		"against this machine's floor, measured in the same run (lower is better)",
		"StatusSync                           15.31 × the pipe-rtt floor",
		"Request/steps-0                      +2.51 ms over the inproc reference",
		"Throughput/concurrency-8             at most 0.71 × inproc: what its floor leaves (now 0.35 ×)",
		"Hop2P/shm-8MiB                       0.500 × ideal     (8389 vs 16777 MB/s)",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}
