package client

import (
	"context"
	"net/url"

	"github.com/fcmhost/fcm/internal/api"
)

// Domains lists VM vm's own domains, with what DNS says of each.
func (c *Client) Domains(ctx context.Context, vm string) ([]api.Domain, error) {
	var out api.ListDomainsResponse
	err := c.call(ctx, "GET", "/v1/vms/"+url.PathEscape(vm)+"/domains", nil, &out)
	return out.Domains, err
}

// AddDomain serves VM vm at domain too.
func (c *Client) AddDomain(ctx context.Context, vm, domain string) (*api.Domain, error) {
	var out api.Domain
	err := c.call(ctx, "POST", "/v1/vms/"+url.PathEscape(vm)+"/domains", api.AddDomainRequest{Domain: domain}, &out)
	return &out, err
}

// RemoveDomain stops serving VM vm at domain.
func (c *Client) RemoveDomain(ctx context.Context, vm, domain string) error {
	return c.call(ctx, "DELETE", "/v1/vms/"+url.PathEscape(vm)+"/domains/"+url.PathEscape(domain), nil, nil)
}
