package evals

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Config is one attention configuration to evaluate, by name:
//
//	dense    every key (KV budget 1)
//	sqNN     Squeezed Attention with a threshold calibrated to skip NN% of the fixed context's keys (the
//	         paper's Sq-NN%; sq70: keep about 30%)
//	sqNNb    Squeezed Attention in the fixed-budget mode: every step keeps exactly 1-NN% of the keys
//	sqNNh    calibrated as sqNN, over the hierarchical two-level index (coarse centroids of the
//	         centroids; each step scores only the centroids under the best coarse ones)
//	sqNNm    calibrated to skip NN% as sqNN, with the attention-mass selection: every head keeps its best
//	         clusters until their estimated attention mass reaches one calibrated target
//	…r       (sqNNr, sqNNmr, sqNNbr, sqNNhr) the same selection, with the dropped keys attended
//	         approximately through their clusters' centroids and mean values (llama.SqueezeOptions.Remainder)
//
// The name is the key of the prediction directory (OUT/preds/NAME/) and of the result rows. Mapping a
// Config to engine options is the caller's job (cmd/longbench).
type Config struct {
	Name string
	// Sparsity is the fraction of keys Squeezed Attention skips (sq70: 0.70); 0 for dense.
	Sparsity float64
	// Hierarchical selects the hierarchical two-level index and its centroid lookup (the h suffix).
	Hierarchical bool
	// FixedBudget selects the fixed-budget mode (the b suffix): keep 1-Sparsity of the keys at every step
	// instead of a calibrated threshold.
	FixedBudget bool
	// Mass selects the attention-mass selection (the m suffix; llama.SqueezeOptions.Mass).
	Mass bool
	// Remainder attends the dropped keys through their clusters (the r suffix, last;
	// llama.SqueezeOptions.Remainder).
	Remainder bool
}

// Squeezed reports whether the config uses Squeezed Attention.
func (c Config) Squeezed() bool { return c.Name != "dense" }

var sqName = regexp.MustCompile(`^sq([0-9]{1,2})([hbm]?)(r?)$`)

// ParseConfig parses one config name.
func ParseConfig(name string) (Config, error) {
	if name == "dense" {
		return Config{Name: name}, nil
	}
	m := sqName.FindStringSubmatch(name)
	if m == nil {
		return Config{}, fmt.Errorf("unknown config %q (want dense, sqNN, sqNNb, sqNNh or sqNNm with NN the percentage of keys skipped, e.g. sq70, optionally followed by r)", name)
	}
	pct, _ := strconv.Atoi(m[1])
	if pct < 1 {
		return Config{}, fmt.Errorf("config %s: the sparsity must be between 1 and 99 percent", name)
	}
	return Config{Name: name, Sparsity: float64(pct) / 100, Hierarchical: m[2] == "h", FixedBudget: m[2] == "b", Mass: m[2] == "m",
		Remainder: m[3] == "r"}, nil
}

// ParseConfigs parses a comma-separated list of config names (duplicates are an error).
func ParseConfigs(list string) ([]Config, error) {
	var out []Config
	seen := map[string]bool{}
	for name := range strings.SplitSeq(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		c, err := ParseConfig(name)
		if err != nil {
			return nil, err
		}
		if seen[name] {
			return nil, fmt.Errorf("config %s listed twice", name)
		}
		seen[name] = true
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no config given")
	}
	return out, nil
}
