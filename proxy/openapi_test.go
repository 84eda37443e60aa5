package proxy_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/portcullis/portcullis/proxy"
)

// openAPIMethods are the operation keys of an OpenAPI path item.
var openAPIMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// fetchOpenAPI serves GET /openapi.json from a server built without a
// service (the route never touches it) and decodes the document.
func fetchOpenAPI(t *testing.T) (*proxy.Server, map[string]any) {
	t.Helper()
	srv := proxy.New(nil, proxy.Config{})
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.json", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /openapi.json: status %d, body %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("GET /openapi.json: Content-Type %q, want application/json", ct)
	}
	var doc map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatalf("openapi.json is not valid JSON: %v", err)
	}
	return srv, doc
}

var echoParam = regexp.MustCompile(`:([A-Za-z0-9_]+)`)

// routeToOpenAPI maps an echo route ("METHOD /path/:param") to the OpenAPI
// operation it serves ("METHOD /path/{param}").
func routeToOpenAPI(route string) string {
	// echo serves contaxy's custom method PUT /users/{id}:change-password
	// as PUT /users/:id.
	if route == "PUT /users/:id" {
		return "PUT /users/{id}:change-password"
	}
	method, path, _ := strings.Cut(route, " ")
	path = strings.Replace(path, "/*", "/{path}", 1)
	return method + " " + echoParam.ReplaceAllString(path, "{$1}")
}

func documentedOperations(t *testing.T, doc map[string]any) map[string]map[string]any {
	t.Helper()
	paths, ok := doc["paths"].(map[string]any)
	if !ok {
		t.Fatalf("openapi.json: paths is %T, want an object", doc["paths"])
	}
	ops := map[string]map[string]any{}
	for path, item := range paths {
		pi, ok := item.(map[string]any)
		if !ok {
			t.Errorf("paths[%q] is %T, want an object", path, item)
			continue
		}
		for key, v := range pi {
			if !slices.Contains(openAPIMethods, key) {
				continue
			}
			op, ok := v.(map[string]any)
			if !ok {
				t.Errorf("paths[%q].%s is %T, want an object", path, key, v)
				continue
			}
			ops[strings.ToUpper(key)+" "+path] = op
		}
	}
	return ops
}

func TestOpenAPIMatchesRoutes(t *testing.T) {
	srv, doc := fetchOpenAPI(t)

	registered := map[string]string{} // OpenAPI form -> echo route
	for _, r := range srv.Routes() {
		k := routeToOpenAPI(r)
		if prev, dup := registered[k]; dup {
			t.Errorf("routes %q and %q both map to %q", prev, r, k)
		}
		registered[k] = r
	}
	if len(registered) == 0 {
		t.Fatal("Routes() returned nothing")
	}
	documented := documentedOperations(t, doc)

	var missing, extra []string
	for k, r := range registered {
		if _, ok := documented[k]; !ok {
			missing = append(missing, fmt.Sprintf("%s (route %s)", k, r))
		}
	}
	for k := range documented {
		if _, ok := registered[k]; !ok {
			extra = append(extra, k)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	if len(missing) > 0 || len(extra) > 0 {
		var b strings.Builder
		b.WriteString("proxy/openapi.json has drifted from Server.routes():\n")
		for _, m := range missing {
			b.WriteString("  missing from openapi.json: " + m + "\n")
		}
		for _, e := range extra {
			b.WriteString("  documented but not registered: " + e + "\n")
		}
		t.Error(b.String())
	}
}

func TestOpenAPIDocumentIsWellFormed(t *testing.T) {
	_, doc := fetchOpenAPI(t)

	if v, _ := doc["openapi"].(string); v != "3.0.3" && v != "3.1.0" {
		t.Errorf("openapi = %v, want \"3.0.3\" or \"3.1.0\"", doc["openapi"])
	}
	if info, _ := doc["info"].(map[string]any); info == nil || info["title"] == nil || info["version"] == nil {
		t.Errorf("info must have title and version, got %v", doc["info"])
	}

	ops := documentedOperations(t, doc)
	keys := make([]string, 0, len(ops))
	for k := range ops {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	seen := map[string]string{}
	for _, k := range keys {
		op := ops[k]
		id, _ := op["operationId"].(string)
		if id == "" {
			t.Errorf("%s: no operationId", k)
		} else if prev, dup := seen[id]; dup {
			t.Errorf("operationId %q used by both %s and %s", id, prev, k)
		} else {
			seen[id] = k
		}
		if rs, _ := op["responses"].(map[string]any); len(rs) == 0 {
			t.Errorf("%s: no responses", k)
		}
	}

	// Every path template parameter is declared as a path parameter, on
	// the operation or on its path item.
	paths, _ := doc["paths"].(map[string]any)
	tmpl := regexp.MustCompile(`\{([^}]+)\}`)
	for _, k := range keys {
		method, path, _ := strings.Cut(k, " ")
		declared := map[string]bool{}
		item, _ := paths[path].(map[string]any)
		for _, src := range []any{item["parameters"], ops[k]["parameters"]} {
			list, _ := src.([]any)
			for _, p := range list {
				pm, _ := resolveRef(doc, p).(map[string]any)
				if pm["in"] == "path" {
					name, _ := pm["name"].(string)
					declared[name] = true
				}
			}
		}
		for _, m := range tmpl.FindAllStringSubmatch(path, -1) {
			if !declared[m[1]] {
				t.Errorf("%s %s: path parameter {%s} is not declared", method, path, m[1])
			}
		}
	}

	// Every $ref resolves inside the document.
	var walk func(at string, v any)
	walk = func(at string, v any) {
		switch v := v.(type) {
		case map[string]any:
			if r, ok := v["$ref"]; ok {
				s, _ := r.(string)
				if _, err := lookupPointer(doc, s); err != nil {
					t.Errorf("%s: $ref %q does not resolve: %v", at, r, err)
				}
			}
			for k, c := range v {
				walk(at+"/"+escapePointer(k), c)
			}
		case []any:
			for i, c := range v {
				walk(at+"/"+strconv.Itoa(i), c)
			}
		}
	}
	walk("#", doc)
}

// resolveRef follows a local $ref (once), returning v itself otherwise.
func resolveRef(doc map[string]any, v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	r, ok := m["$ref"].(string)
	if !ok {
		return v
	}
	target, err := lookupPointer(doc, r)
	if err != nil {
		return v
	}
	return target
}

// lookupPointer resolves a local reference "#/a/b" (RFC 6901).
func lookupPointer(doc map[string]any, ref string) (any, error) {
	rest, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, fmt.Errorf("not a local reference (want #/...)")
	}
	var cur any = doc
	for _, tok := range strings.Split(rest, "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		switch c := cur.(type) {
		case map[string]any:
			next, ok := c[tok]
			if !ok {
				return nil, fmt.Errorf("no member %q", tok)
			}
			cur = next
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) {
				return nil, fmt.Errorf("bad array index %q", tok)
			}
			cur = c[i]
		default:
			return nil, fmt.Errorf("cannot descend into %T at %q", cur, tok)
		}
	}
	return cur, nil
}

func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}
