package main

import (
	"github.com/urfave/cli/v2"
)

// cookieFlags are the cookie-mode flags beside --cookie-secret.
func cookieFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "cookie-lifetime", Value: defaults.CookieLifetime, Usage: "cookies expire: one is accepted in the period of this length it was made in and the next one, so for one to two lifetimes (--cookie-secret; at least 1m)"},
	}
}
