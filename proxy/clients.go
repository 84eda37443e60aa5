package proxy

import (
	"log/slog"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/authz"
)

// clientsPermission guards the OAuth2 client registry.
const clientsPermission = "auth/clients#admin"

// registeredClient is the answer to a registration: the client and, for
// a confidential client, its secret, which is never shown again.
type registeredClient struct {
	authz.Client
	Secret string `json:"client_secret,omitempty"`
}

func (s *Server) createClient(c echo.Context) error {
	acc, err := s.require(c, clientsPermission)
	if err != nil {
		return err
	}
	body, err := readBody(c)
	if err != nil {
		return err
	}
	var spec authz.ClientSpec
	if err := decodeStrict(body, &spec); err != nil {
		return badRequestJSON(err)
	}
	secret, cl, rev, err := s.svc.RegisterClient(c.Request().Context(), spec)
	if err != nil {
		return err
	}
	s.auditChange(c, acc.Subject, AuditClientCreate, rev, slog.String("client_id", cl.ID), slog.String("subject", cl.Subject),
		slog.Any("grant_types", cl.GrantTypes), slog.Bool("public", cl.Public))
	setRevision(c, rev)
	c.Response().Header().Set("Cache-Control", "no-store")
	c.Response().Header().Set("Pragma", "no-cache")
	return c.JSON(http.StatusCreated, registeredClient{Client: cl, Secret: secret})
}

func (s *Server) listClients(c echo.Context) error {
	if _, err := s.require(c, clientsPermission); err != nil {
		return err
	}
	cls, err := s.svc.Clients(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, cls)
}

func (s *Server) getClient(c echo.Context) error {
	if _, err := s.require(c, clientsPermission); err != nil {
		return err
	}
	cl, err := s.svc.Client(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, cl)
}

func (s *Server) deleteClient(c echo.Context) error {
	acc, err := s.require(c, clientsPermission)
	if err != nil {
		return err
	}
	rev, err := s.svc.DeleteClient(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	s.auditChange(c, acc.Subject, AuditClientDelete, rev, slog.String("client_id", c.Param("id")))
	setRevision(c, rev)
	return c.NoContent(http.StatusNoContent)
}
