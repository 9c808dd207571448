// Command shrink runs ShrinkExecutableMappings in a static executable (the
// kind envd ships) and prints its file-backed PSS before and after, for
// memtrim's test, whose own binary may be dynamically linked (-race).
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/envd-project/envd/internal/memtrim"
)

func pssFile() string {
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Pss_File:"); ok {
			return strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
		}
	}
	return "?"
}

func main() {
	before := pssFile()
	if err := memtrim.ShrinkExecutableMappings(); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	after := pssFile()
	// Code runs on after its pages went: they fault back in.
	fmt.Println(before, after, strings.Repeat("x", 3))
}
