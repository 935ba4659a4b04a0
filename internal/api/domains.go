package api

// Custom domains: a VM served at names of its owner's besides
// https://<vm>.<domain> (fcm domains add|ls|rm).

// CodeTaken: the domain is another VM's (HTTP 409).
const CodeTaken = "taken"

// MaxDomainsPerVM is how many custom domains one VM may have.
const MaxDomainsPerVM = 20

// AddDomainRequest is the body of POST /v1/vms/{name}/domains.
type AddDomainRequest struct {
	Domain string `json:"domain"`
}

// Domain is one of a VM's custom domains, with what DNS says of it now.
type Domain struct {
	Domain string   `json:"domain"`
	URL    string   `json:"url"`             // https://<domain>
	Route  string   `json:"route,omitempty"` // applied or pending in Caddy
	DNS    DNSCheck `json:"dns"`
}

// DNSCheck is whether a domain points at this host: its addresses, the
// host's (those of fcm.<domain>), and what to do when they do not meet.
type DNSCheck struct {
	Points    bool     `json:"points"`
	Addresses []string `json:"addresses,omitempty"` // what the domain resolves to
	Host      []string `json:"host,omitempty"`      // this host's addresses
	Target    string   `json:"target"`              // a CNAME target that works: <vm>.<domain>
	Message   string   `json:"message"`             // one line for people
}

// ListDomainsResponse is the answer to GET /v1/vms/{name}/domains.
type ListDomainsResponse struct {
	Domains []Domain `json:"domains"`
}
