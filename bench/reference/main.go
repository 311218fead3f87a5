// Command apiclient-reference does with client-go what bench/apiclient_bench does with ephemera's
// apiclient, so that both are measured side by side in one run. Comparison tooling, not product.
//
//	apiclient-reference -kubeconfig K -namespace NS -count 5000 -inflight 8 create-configmaps
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	namespace := flag.String("namespace", "default", "namespace to create objects in")
	count := flag.Int("count", 5000, "objects to create")
	inflight := flag.Int("inflight", 8, "requests in flight")
	prefix := flag.String("prefix", "ref", "object name prefix")
	flag.Parse()
	if flag.Arg(0) != "create-configmaps" {
		fmt.Fprintln(os.Stderr, "usage: apiclient-reference [flags] create-configmaps")
		os.Exit(2)
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	config.QPS = -1 // no client-side rate limit, as in our run
	config.UserAgent = "apiclient-reference"
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var next, failures atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *inflight; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(*count); i = next.Add(1) - 1 {
				cm := &corev1.ConfigMap{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", *prefix, i)},
					Data:       map[string]string{"value": fmt.Sprint(i)},
				}
				if _, err := client.CoreV1().ConfigMaps(*namespace).Create(context.Background(), cm, metav1.CreateOptions{}); err != nil {
					failures.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	seconds := time.Since(start).Seconds()
	out, _ := json.Marshal(map[string]any{
		"client": "client-go", "count": *count, "inflight": *inflight,
		"failures": failures.Load(), "seconds": seconds, "per_second": float64(*count) / seconds,
	})
	fmt.Println(string(out))
}
