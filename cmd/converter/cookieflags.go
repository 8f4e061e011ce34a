package main

import (
	"log/slog"

	"github.com/urfave/cli/v2"

	"github.com/convert-tc/converter/cookie"
)

// cookieFlags are the cookie-mode flags beside --cookie-secret.
func cookieFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "cookie-lifetime", Value: cookie.DefaultLifetime, Usage: "cookies expire: one is accepted in the period of this length it was made in and the next one, so for one to two lifetimes (--cookie-secret; at least 1m)"},
	}
}

// cookieOptions maps the cookie flags onto cookie.Load options.
func cookieOptions(c *cli.Context) ([]cookie.Option, error) {
	d := c.Duration("cookie-lifetime")
	if d < cookie.MinLifetime {
		return nil, usageError("--cookie-lifetime %v: at least %v", d, cookie.MinLifetime)
	}
	return []cookie.Option{cookie.WithLifetime(d)}, nil
}

// loadCookies returns the keys of --cookie-secret with the options of the
// cookie flags, or nil when cookie mode is off. A secret file open to its
// group or others is refused with an error that names it and its mode.
func loadCookies(c *cli.Context) (*cookie.Keys, error) {
	path := c.String("cookie-secret")
	if path == "" {
		return nil, nil
	}
	opts, err := cookieOptions(c)
	if err != nil {
		return nil, err
	}
	keys, err := cookie.Load(path, opts...)
	if err != nil {
		return nil, usageError("--cookie-secret: %v", err)
	}
	return keys, nil
}

// reloadCookies reads the secret file again, so that keys rotate without
// a restart. A file that fails the checks (mode, content) keeps the keys
// in use and is logged.
func reloadCookies(keys *cookie.Keys, path string, log *slog.Logger) error {
	if err := keys.Reload(path); err != nil {
		log.Error("reload cookie secret; keeping the keys in use", "path", path, "error", err.Error())
		return err
	}
	log.Info("cookie secret reloaded", "path", path)
	return nil
}
