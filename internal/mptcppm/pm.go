// Package mptcppm drives the kernel's in-kernel MPTCP path manager over
// generic netlink (family mptcp_pm): it adds and removes the endpoints a
// converter announces to its clients (ADD_ADDR), so that extra subflows
// join an address and port the converter owns.
package mptcppm

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// From include/uapi/linux/mptcp_pm.h.
const (
	familyName = "mptcp_pm"

	cmdAddAddr = 1
	cmdDelAddr = 2

	attrAddr = 1 // nested endpoint

	addrAttrFamily = 1 // u16
	addrAttrID     = 2 // u8
	addrAttrAddr4  = 3 // be32
	addrAttrAddr6  = 4 // 16 bytes
	addrAttrPort   = 5 // u16, host order
	addrAttrFlags  = 6 // u32
	addrAttrIfIdx  = 7 // s32

	// FlagSignal announces the endpoint to peers (ADD_ADDR).
	FlagSignal = 1
	// FlagSubflow opens subflows from the endpoint.
	FlagSubflow = 2
	// FlagBackup marks subflows over the endpoint as backup.
	FlagBackup = 4

	afInet  = 2
	afInet6 = 10
)

// Endpoint is one path-manager endpoint.
type Endpoint struct {
	ID      uint8 // 1..255; chosen by the caller so it can be removed later
	Addr    netip.AddrPort
	IfIndex int32
	Flags   uint32
}

// Client talks to the path manager of the network namespace in which it
// was opened.
type Client struct {
	conn   *genetlink.Conn
	family genetlink.Family
}

// Open connects to the mptcp_pm family.
func Open() (*Client, error) {
	conn, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("open generic netlink socket: %w", err)
	}
	fam, err := conn.GetFamily(familyName)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("resolve generic netlink family %s (kernel without MPTCP?): %w", familyName, err)
	}
	return &Client{conn: conn, family: fam}, nil
}

// Close releases the netlink socket.
func (c *Client) Close() error { return c.conn.Close() }

// Add installs an endpoint (needs CAP_NET_ADMIN).
func (c *Client) Add(e Endpoint) error {
	return c.do(cmdAddAddr, e, fmt.Sprintf("add MPTCP endpoint %v id %d", e.Addr, e.ID))
}

// Delete removes the endpoint with e.ID (and e.Addr's address).
func (c *Client) Delete(e Endpoint) error {
	return c.do(cmdDelAddr, e, fmt.Sprintf("delete MPTCP endpoint id %d", e.ID))
}

func (c *Client) do(cmd uint8, e Endpoint, what string) error {
	nested, err := encodeEndpoint(e)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(attrAddr|netlink.Nested, nested)
	body, err := ae.Encode()
	if err != nil {
		return fmt.Errorf("%s: encode: %w", what, err)
	}
	msg := genetlink.Message{Header: genetlink.Header{Command: cmd, Version: c.family.Version}, Data: body}
	if _, err := c.conn.Execute(msg, c.family.ID, netlink.Request|netlink.Acknowledge); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// encodeEndpoint builds the nested MPTCP_PM_ATTR_ADDR attributes.
func encodeEndpoint(e Endpoint) ([]byte, error) {
	a := e.Addr.Addr().Unmap()
	ae := netlink.NewAttributeEncoder()
	switch {
	case a.Is4():
		ae.Uint16(addrAttrFamily, afInet)
		b := a.As4()
		ae.Uint32(addrAttrAddr4, binary.NativeEndian.Uint32(b[:])) // kept in network order
	case a.Is6():
		ae.Uint16(addrAttrFamily, afInet6)
		b := a.As16()
		ae.Bytes(addrAttrAddr6, b[:])
	default:
		return nil, fmt.Errorf("endpoint address %v is not an IP address", e.Addr)
	}
	ae.Uint8(addrAttrID, e.ID)
	if p := e.Addr.Port(); p != 0 {
		ae.Uint16(addrAttrPort, p)
	}
	ae.Uint32(addrAttrFlags, e.Flags)
	if e.IfIndex != 0 {
		ae.Int32(addrAttrIfIdx, e.IfIndex)
	}
	return ae.Encode()
}
