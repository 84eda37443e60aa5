package authz

import (
	"context"
	"fmt"
	"slices"
	"unicode/utf8"
)

// AddPermission makes resource hold grant: a permission (RESOURCE#LEVEL) or
// a role reference (a bare resource name). It returns the revision the
// change committed at; this replica's caches reflect it on return.
func (s *Service) AddPermission(ctx context.Context, resource, grant string) (Revision, error) {
	res, g, err := parseResourceAndGrant(resource, grant)
	if err != nil {
		return 0, err
	}
	rev, err := s.store.AddGrant(ctx, res, g.String())
	if err != nil {
		return 0, fmt.Errorf("add permission: %w", err)
	}
	s.gens.bump(slotGrant, res)
	return rev, nil
}

// RemovePermission removes the exact grant from resource and, with
// removeSub, every base permission the resource holds that grant itself
// grants (removing projects#read also removes projects/x#read; *#read
// removes every #read grant). Role references are never swept. All
// removals are one transaction.
func (s *Service) RemovePermission(ctx context.Context, resource, grant string, removeSub bool) (Revision, error) {
	res, g, err := parseResourceAndGrant(resource, grant)
	if err != nil {
		return 0, err
	}
	remove := []string{g.String()}
	if removeSub && !g.IsRole() {
		held, _, err := s.store.Grants(ctx, []string{res})
		if err != nil {
			return 0, fmt.Errorf("remove permission: %w", err)
		}
		for _, hs := range held[res] {
			h, err := ParseGrant(hs)
			if err != nil {
				continue
			}
			if !h.IsRole() && g.Permission().Covers(h.Permission()) && hs != remove[0] {
				remove = append(remove, hs)
			}
		}
	}
	rev, err := s.store.RemoveGrants(ctx, res, remove)
	if err != nil {
		return 0, fmt.Errorf("remove permission: %w", err)
	}
	s.gens.bump(slotGrant, res)
	return rev, nil
}

func parseResourceAndGrant(resource, grant string) (string, Grant, error) {
	res, err := ParseResource(resource)
	if err != nil {
		return "", Grant{}, err
	}
	g, err := ParseGrant(grant)
	if err != nil {
		return "", Grant{}, err
	}
	return res, g, nil
}

// ListPermissions lists what resource holds. Without resolveRoles: its raw
// grants, role references included. With resolveRoles: the distinct base
// permissions of the resource and of every role it reaches, recursively,
// without role names. useCache=false reads everything from the store.
func (s *Service) ListPermissions(ctx context.Context, resource string, resolveRoles, useCache bool) ([]string, error) {
	res, err := ParseResource(resource)
	if err != nil {
		return nil, err
	}
	if !resolveRoles {
		held, _, err := s.store.Grants(ctx, []string{res})
		if err != nil {
			return nil, fmt.Errorf("list permissions: %w", err)
		}
		out := slices.Clone(held[res])
		if out == nil {
			out = []string{}
		}
		return out, nil
	}
	se, _, err := s.subjectGrants(ctx, res, "", useCache, 0)
	if err != nil {
		return nil, fmt.Errorf("list permissions: %w", err)
	}
	out := slices.Clone(se.base)
	if out == nil {
		out = []string{}
	}
	return out, nil
}

// ResourcesWithPermission lists every resource that holds exactly grant,
// optionally only those whose name starts with prefix.
func (s *Service) ResourcesWithPermission(ctx context.Context, grant, prefix string) ([]string, error) {
	g, err := ParseGrant(grant)
	if err != nil {
		return nil, err
	}
	if len(prefix) > MaxResourceLen {
		return nil, invalid("resource name prefix", "too long")
	}
	if !utf8.ValidString(prefix) {
		return nil, invalid("resource name prefix", "not valid UTF-8")
	}
	out, err := s.store.ResourcesWithGrant(ctx, g.String(), prefix)
	if err != nil {
		return nil, fmt.Errorf("list resources: %w", err)
	}
	if out == nil {
		out = []string{}
	}
	return out, nil
}
