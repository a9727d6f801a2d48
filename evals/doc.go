// Package evals runs LongBench-format evaluations: it reads the JSON-lines datasets, builds each prompt from
// the task's template (split at {input} into a prefix-cached fixed context and the user input), truncates it
// in the middle as LongBench's pred.py does, predicts with an injected LM, and scores the predictions with
// ports of LongBench's metrics (metrics.go, rouge.go, fuzz.go), writing resumable prediction files, a CSV
// and Markdown table of results, and a score-against-KV-budget plot.
//
// The flow of one run (cmd/longbench is a thin wrapper around it):
//
//	specs, _ := evals.NewSpecs(promptsFile, maxLenFile)  // templates, max new tokens, metrics
//	task, _ := evals.LoadTask(dataDir, "lcc", specs, limit) // rows of DIR/lcc.jsonl or DIR/lcc/dev.jsonl
//	plan, _ := evals.NewPlan(outDir, configs, tasks, maxLength) // reads predictions already made
//	_ = plan.Execute(ctx, lms, progress)                 // predicts the rest, one flushed row each
//	results, _ := plan.Results()                         // scores every (config, task)
//	_ = evals.WriteResults(outDir, results)              // results.csv, results.md, budget.png
//
// The package imports no engine code: the model comes in through the small LM interface, so tests drive
// the whole flow with a fake.
package evals
