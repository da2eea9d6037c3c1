// Package api is boxctl's HTTP/JSON API: the wire types, the server (one
// more client of package core: no lifecycle logic of its own), the route
// table, the mapping of core's typed errors to stable error codes, and the
// OpenAPI 3 document (openapi.json, embedded and served at /openapi.json).
//
// The server keeps the daemonless model: boxes it creates are detached and
// outlive it, and any number of servers and CLIs may share one home. Exec
// streams run over WebSocket; a command whose stream's client goes away is
// killed (see docs/api.md for the protocol and the limits).
package api
