package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"runtime/debug"
)

// devVersion is version when neither -ldflags nor the build information
// tells more.
const devVersion = "dev"

func init() {
	if version == devVersion || version == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			version = buildInfoVersion(bi)
		}
	}
}

// buildInfoVersion is the version of a binary built without -ldflags: the
// main module's version (a tag, or the pseudo-version Go derives from the
// commit), else the VCS revision with "-dirty" when the tree was modified,
// else "dev".
func buildInfoVersion(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var modified bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev == "" {
		return devVersion
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified {
		rev += "-dirty"
	}
	return rev
}

// versionKey is the top-level field of every --json document that holds
// the converter's version.
const versionKey = "version"

// withVersion adds a top-level key with the converter's version to the
// JSON object doc, before its other fields; doc is returned as it is when
// it already has that key. Anything but an object is an error.
func withVersion(doc []byte, key string) ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(doc, &fields); err != nil || fields == nil {
		return nil, fmt.Errorf("add %q to %.40q: not a JSON object", key, doc)
	}
	if _, ok := fields[key]; ok {
		return doc, nil
	}
	field, err := json.Marshal(map[string]string{key: version})
	if err != nil {
		return nil, err
	}
	field = field[:len(field)-1] // {"key":"value"
	rest := bytes.TrimSpace(doc)[1:]
	if len(fields) > 0 {
		field = append(field, ',')
	} else {
		rest = []byte("}")
	}
	var out bytes.Buffer
	out.Write(field)
	out.Write(rest)
	return out.Bytes(), nil
}

// versionedJSON encodes v as one JSON object with the converter's version
// as its first field, on one line without HTML escaping, or indented with
// indent when indent is not empty; the result ends with a newline.
func versionedJSON(v any, indent string) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return versionedRaw(b.Bytes(), indent)
}

// versionedRaw is versionedJSON of an encoded object.
func versionedRaw(raw []byte, indent string) ([]byte, error) {
	return versionedRawKey(raw, versionKey, indent)
}

// versionedRawKey is versionedRaw with the version under key.
func versionedRawKey(raw []byte, key, indent string) ([]byte, error) {
	doc, err := withVersion(raw, key)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if indent != "" {
		err = json.Indent(&out, doc, "", indent)
	} else {
		err = json.Compact(&out, doc)
	}
	if err != nil {
		return nil, err
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}
