package engine_test

import (
	"context"
	"fmt"

	"github.com/squeezeai/sqllm/backend/xla"
	"github.com/squeezeai/sqllm/engine"
)

// Open the bundled model and stream a greedy completion. The text is transformers' own greedy
// continuation of this prompt, cut at a stop string.
func Example() {
	m, err := engine.Open("../models/tinycode-llama-16m", engine.Options{Backend: xla.Go})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	var streamed string
	res, err := m.Generate(context.Background(), engine.Request{
		Prompt:    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
		MaxTokens: 24,
		Stop:      []string{"\n    "},
		OnText:    func(s string) error { streamed += s; return nil },
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%q\n%s, streamed == text: %v\n", res.Text, res.StopReason, streamed == res.Text)
	// Output:
	// "    return n-1\n\n\ndef _get_fibonacci(n):"
	// stop_string, streamed == text: true
}
