package core

import (
	"context"
	"sync"

	"github.com/boxctl/boxctl/guest/agentclient"
)

// agentPool keeps one guest agent connection per agent socket, so repeated
// execs into a box do not pay for a new connection each time.
type agentPool struct {
	mu      sync.Mutex
	clients map[string]*agentclient.Client
}

func (p *agentPool) get(ctx context.Context, socket string) (*agentclient.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[socket]; ok {
		return c, nil
	}
	c, err := agentclient.Dial(ctx, socket)
	if err != nil {
		return nil, err
	}
	if p.clients == nil {
		p.clients = map[string]*agentclient.Client{}
	}
	p.clients[socket] = c
	return c, nil
}

// drop forgets c (if it is still the cached client for socket) and closes it.
func (p *agentPool) drop(socket string, c *agentclient.Client) {
	p.mu.Lock()
	if p.clients[socket] == c {
		delete(p.clients, socket)
	}
	p.mu.Unlock()
	_ = c.Close()
}

func (p *agentPool) closeAll() {
	p.mu.Lock()
	clients := p.clients
	p.clients = nil
	p.mu.Unlock()
	for _, c := range clients {
		_ = c.Close()
	}
}
