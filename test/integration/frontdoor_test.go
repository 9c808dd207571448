package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/envd-project/envd/test/envdtest"
)

func TestHealthFlavorsAndCORS(t *testing.T) {
	wrenn := envdtest.Start(t)
	res, err := http.Get(wrenn.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	var health struct{ Version string }
	if res.StatusCode != http.StatusOK || json.Unmarshal(body, &health) != nil || health.Version == "" || res.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("wrenn /health: %d %s %v", res.StatusCode, body, res.Header)
	}

	e2b := envdtest.Start(t, "--flavor", "e2b")
	res, err = http.Get(e2b.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNoContent {
		t.Errorf("e2b /health: %d", res.StatusCode)
	}
	res, err = http.Get(e2b.URL + "/envs")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(body), `"E2B_SANDBOX":"false"`) {
		t.Errorf("e2b /envs: %s", body)
	}

	// A preflight is answered by CORS and never reaches auth.
	req, _ := http.NewRequest(http.MethodOptions, wrenn.URL+"/process.Process/Start", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "connect-protocol-version,content-type,x-access-token")
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode/100 != 2 || res.Header.Get("Access-Control-Allow-Origin") != "*" || res.Header.Get("Access-Control-Max-Age") != "7200" {
		t.Errorf("preflight: %d %v", res.StatusCode, res.Header)
	}
	req, _ = http.NewRequest(http.MethodGet, wrenn.URL+"/health", nil)
	req.Header.Set("Origin", "https://app.example")
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if !strings.Contains(res.Header.Get("Access-Control-Expose-Headers"), "Grpc-Status") {
		t.Errorf("exposed headers: %v", res.Header)
	}

	for path, want := range map[string]int{"/nope": http.StatusNotFound} {
		res, err := http.Get(wrenn.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("%s: %d, want %d", path, res.StatusCode, want)
		}
	}
	res, err = http.Post(wrenn.URL+"/health", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /health: %d", res.StatusCode)
	}
}

func TestVersionAndCommitFlags(t *testing.T) {
	dir, err := envdtest.Bundle()
	if err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"--version", "--commit"} {
		out, err := exec.Command(filepath.Join(dir, "envd-init"), flag).Output()
		if err != nil {
			t.Fatalf("%s: %v", flag, err)
		}
		if flag == "--version" && strings.Count(string(out), ".") != 2 {
			t.Errorf("--version printed %q", out)
		}
	}
	// A plugin binary run by hand explains itself instead of hanging.
	out, err := exec.Command(filepath.Join(dir, "envd-proc")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--standalone") {
		t.Errorf("envd-proc alone: %v %s", err, out)
	}
}
