// Command kstatus prints what sigs.k8s.io/cli-utils/pkg/kstatus/status computes for Kubernetes
// objects: the status Flux health checks, `kpt live status` and similar tools act on.
//
// It reads JSON on stdin, one object or a List (`kubectl get -o json` output), and writes one JSON
// line per object: {"kind", "namespace", "name", "status", "message"}. The tests use it to check
// that InitramfsBuild conditions mean to kstatus what the operator intends.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kubectl get KIND [NAME] -o json | kstatus")
		os.Exit(2)
	}
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	var doc unstructured.Unstructured
	if err := doc.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("reading a Kubernetes object or List from stdin: %w", err)
	}
	objects := []unstructured.Unstructured{doc}
	if doc.IsList() {
		list, err := doc.ToList()
		if err != nil {
			return err
		}
		objects = list.Items
	}
	encoder := json.NewEncoder(out)
	for i := range objects {
		obj := &objects[i]
		result, err := status.Compute(obj)
		if err != nil {
			return fmt.Errorf("%s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
		v := verdict{obj.GetKind(), obj.GetNamespace(), obj.GetName(), result.Status.String(), result.Message}
		if err := encoder.Encode(v); err != nil {
			return err
		}
	}
	return nil
}
