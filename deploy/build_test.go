package deploy_test

import (
	"debug/buildinfo"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// goBuildLine returns the one `go build` command of a script or Dockerfile,
// without its output file (-o ...) and a leading RUN.
func goBuildLine(t *testing.T, file string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, file))
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") || !strings.Contains(line, "go build") {
			continue
		}
		line = strings.TrimPrefix(line, "RUN ")
		found = append(found, regexp.MustCompile(` -o \S+`).ReplaceAllString(line, ""))
	}
	if len(found) != 1 {
		t.Fatalf("%s: %d go build commands, want 1: %q", file, len(found), found)
	}
	return found[0]
}

// TestBuildScriptIsTheDockerfilesBuild keeps CI's binary (scripts/build.sh;
// no Docker there) and the image's the same build.
func TestBuildScriptIsTheDockerfilesBuild(t *testing.T) {
	script, docker := goBuildLine(t, "scripts/build.sh"), goBuildLine(t, "Dockerfile")
	if script != docker {
		t.Errorf("scripts/build.sh builds with\n  %s\nthe Dockerfile with\n  %s", script, docker)
	}
	for _, want := range []string{"CGO_ENABLED=0 ", "-trimpath", "-X main.version=${VERSION}", "./cmd/portcullis"} {
		if !strings.Contains(docker, want) {
			t.Errorf("the build command lacks %q: %s", want, docker)
		}
	}
}

// TestDockerfileImage checks the final stage: a static base, the binary at
// /portcullis, a non-root user, both ports.
func TestDockerfileImage(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var stages [][]string // instructions of each stage
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "FROM ") {
			stages = append(stages, nil)
		}
		if len(stages) > 0 {
			stages[len(stages)-1] = append(stages[len(stages)-1], line)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a runtime stage", len(stages))
	}
	final := stages[len(stages)-1]
	base := strings.Fields(final[0])[1]
	if !strings.HasPrefix(base, "gcr.io/distroless/static") && base != "scratch" {
		t.Errorf("runtime base %s: want distroless static or scratch", base)
	}
	for _, want := range []string{
		"COPY --from=build /out/portcullis /portcullis",
		"USER 65532:65532",
		"EXPOSE 8080 9090",
		`ENTRYPOINT ["/portcullis"]`,
	} {
		if !slices.Contains(final, want) {
			t.Errorf("runtime stage lacks %q: %q", want, final)
		}
	}
}

// TestBinaryIsStatic builds with scripts/build.sh and checks what the
// distroless static image needs: no dynamic loader, no shared libraries, no
// cgo, and the version stamped.
func TestBinaryIsStatic(t *testing.T) {
	bin := portcullisBinary(t)
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("program header %v: the binary is dynamically linked", p.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("shared libraries %v (%v), want none", libs, err)
	}

	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	// (With -trimpath the go command leaves -ldflags out of the build
	// information; `version` below shows the stamp.)
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings %v: want CGO_ENABLED=0 and -trimpath", settings)
	}
	if info.Path != "github.com/portcullis/portcullis/cmd/portcullis" {
		t.Errorf("main package %s", info.Path)
	}

	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(out), "portcullis "+stampedVersion+"\n"; got != want {
		t.Errorf("portcullis version = %q, want %q", got, want)
	}
}
