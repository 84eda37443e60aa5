package authz_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/portcullis/portcullis/authz"
)

func TestParsePermission(t *testing.T) {
	tests := []struct {
		in      string
		want    string // canonical form; "" means ErrInvalid
		comment string
	}{
		{"projects/a#read", "projects/a#read", ""},
		{"projects/a#READ", "projects/a#read", "level case-insensitive"},
		{"projects/a# Write ", "projects/a#write", "level trimmed"},
		{"/projects/a/#admin", "projects/a#admin", "leading and trailing / trimmed"},
		{"::projects/a:#read", "projects/a#read", "leading and trailing : trimmed"},
		{" projects/a #read", "projects/a#read", "white space trimmed"},
		{"*#admin", "*#admin", "super-admin"},
		{"projects/a:b/c#read", "projects/a:b/c#read", ": is a boundary"},
		{"users/john.doe@example.com#read", "users/john.doe@example.com#read", ""},
		{"projects/a", "", "no level"},
		{"projects/a#", "", "empty level"},
		{"projects/a#owner", "", "unknown level"},
		{"#read", "", "empty resource"},
		{"/#read", "", "empty after trimming"},
		{"projects/a#read#write", "", "two #"},
		{"projects//a#read", "", "empty segment"},
		{"projects/:a#read", "", "empty segment between / and :"},
		{"projects/./a#read", "", "dot segment"},
		{"projects/../admin#read", "", "dot-dot segment"},
		{"..#read", "", "dot-dot only"},
		{"projects/%2e%2e#read", "", "percent-encoding"},
		{"projects/a%2Fb#read", "", "encoded slash"},
		{"projects/a b#read", "", "space inside"},
		{"projects/a\\b#read", "", "backslash"},
		{"projects/a\x00#read", "", "NUL"},
		{"projects/a\n#read", "", "newline"},
		{"projects/*#read", "", "* only as the whole resource"},
		{"projects/a?x=1#read", "", "query"},
		{"projects/a|b#read", "", "store separator"},
		{"projects/\xff#read", "", "invalid UTF-8"},
		{"projects/é#read", "", "non-ASCII"},
		{strings.Repeat("a", authz.MaxResourceLen) + "#read", strings.Repeat("a", authz.MaxResourceLen) + "#read", "longest resource"},
		{strings.Repeat("a", authz.MaxResourceLen+1) + "#read", "", "resource too long"},
		{strings.Repeat("/", authz.MaxPermissionLen) + "a#read", "", "input too long"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, err := authz.ParsePermission(tt.in)
			if tt.want == "" {
				if !errors.Is(err, authz.ErrInvalid) {
					t.Fatalf("ParsePermission(%q) = %v, %v; want ErrInvalid (%s)", tt.in, p, err, tt.comment)
				}
				var ie *authz.InvalidError
				if !errors.As(err, &ie) || ie.Reason == "" {
					t.Fatalf("error %v is not an *InvalidError with a reason", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePermission(%q): %v (%s)", tt.in, err, tt.comment)
			}
			if got := p.String(); got != tt.want {
				t.Fatalf("ParsePermission(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseGrant(t *testing.T) {
	tests := []struct {
		in   string
		want string
		role bool
		bad  bool
	}{
		{"roles/user", "roles/user", true, false},
		{"/roles/user/", "roles/user", true, false},
		{"projects/a#read", "projects/a#read", false, false},
		{"roles/../admin", "", false, true},
		{"", "", false, true},
		{"*", "*", true, false},
	}
	for _, tt := range tests {
		g, err := authz.ParseGrant(tt.in)
		if tt.bad {
			if !errors.Is(err, authz.ErrInvalid) {
				t.Errorf("ParseGrant(%q) = %v, %v; want ErrInvalid", tt.in, g, err)
			}
			continue
		}
		if err != nil || g.String() != tt.want || g.IsRole() != tt.role {
			t.Errorf("ParseGrant(%q) = %q role=%v, %v; want %q role=%v", tt.in, g, g.IsRole(), err, tt.want, tt.role)
		}
	}
}

func TestCovers(t *testing.T) {
	tests := []struct {
		granted, requested string
		want               bool
	}{
		{"projects/a#write", "projects/a#read", true},
		{"projects/a#write", "projects/a#write", true},
		{"projects/a#write", "projects/a#admin", false},
		{"projects/a#write", "projects/a/services/b#write", true},
		{"projects/a#write", "projects/a:x#read", true},
		{"projects/a#write", "projects/ab#read", false},
		{"projects/a#write", "projects#read", false},
		{"projects/a#admin", "projects/a/b/c/d#admin", true},
		{"*#admin", "anything/at/all#admin", true},
		{"*#admin", "*#admin", true},
		{"*#read", "x#read", true},
		{"*#read", "x#write", false},
		{"projects#admin", "*#read", false},
		{"projects/a:b#read", "projects/a#read", false},
		{"projects/a:b#read", "projects/a:b/c#read", true},
	}
	for _, tt := range tests {
		g, err1 := authz.ParsePermission(tt.granted)
		r, err2 := authz.ParsePermission(tt.requested)
		if err1 != nil || err2 != nil {
			t.Fatalf("parse: %v %v", err1, err2)
		}
		if got := g.Covers(r); got != tt.want {
			t.Errorf("%s covers %s = %v, want %v", tt.granted, tt.requested, got, tt.want)
		}
	}
}

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]authz.Level{"read": authz.LevelRead, " WRITE": authz.LevelWrite, "Admin ": authz.LevelAdmin} {
		if got, err := authz.ParseLevel(in); err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "owner", "reader", "\xff"} {
		if _, err := authz.ParseLevel(in); !errors.Is(err, authz.ErrInvalid) {
			t.Errorf("ParseLevel(%q) err = %v, want ErrInvalid", in, err)
		}
	}
}
