package main

// The json mode: Go's encoding/json against the registry's instance codecs (InstanceCodec.json
// and InstanceCodec.etcdNaming), both ways.
//
// The instances travel between the Swift test and this program as hex-encoded UTF-8 in
// tab-separated lines, not as JSON: a string that reached Go through JSON would already have
// passed through the escaping under test on both sides, and a shared mistake could cancel out.
//
// Input, one case per line (strings hex-encoded, weight in decimal):
//
//	id  codec  name  address  weight  group  version  metadata  swift-bytes
//
// where codec is "json" or "naming", metadata is "key=value" pairs of hex joined by commas, and
// swift-bytes are the value Swift's codec wrote for the instance. Output, one line per case:
//
//	RESULT id  go-bytes  legacy-bytes  decode-error  name  address  weight  group  version  metadata  re-marshalled
//
// go-bytes: json.Marshal of the Go struct that codec mirrors, built from the input fields.
// legacy-bytes (json codec only): json.Marshal of the Go design's struct without tags (its
// "Metadata" is null when empty, it has no Version). decode-error: empty when json.Unmarshal of
// swift-bytes into the Go struct succeeded (unknown fields refused), else the error, and the
// fields after it are what Go decoded (metadata keys sorted by bytes), re-marshalled the
// decoded struct. The first line printed is "GO <runtime.Version()>".

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
)

// goInstance is the Go design's struct as the registry's json codec writes it: Metadata and
// Version are left out when empty.
type goInstance struct {
	Name     string
	Address  string
	Weight   int
	Group    string
	Metadata map[string]string `json:",omitempty"`
	Version  string            `json:",omitempty"`
}

// legacyInstance is the Go design's struct as first written, without tags.
type legacyInstance struct {
	Name     string
	Address  string
	Weight   int
	Group    string
	Metadata map[string]string
}

// namingUpdate has the shape of etcd's naming value (clientv3/naming/endpoints/internal.Update,
// which grpc-go's etcd resolver reads): Op is an Operation (uint8), Metadata an interface{}.
type namingUpdate struct {
	Op       uint8
	Addr     string
	Metadata interface{}
}

// namingAttributes is what the registry's etcd-naming codec puts in the Metadata field.
type namingAttributes struct {
	Weight   int
	Group    string
	Version  string            `json:",omitempty"`
	Metadata map[string]string `json:",omitempty"`
}

// namingEnvelope reads a naming value with its Metadata kept raw, for a strict second pass.
type namingEnvelope struct {
	Op       uint8
	Addr     string
	Metadata json.RawMessage
}

type codecCase struct {
	id, codec, name, address, group, version string
	weight                                   int
	metadata                                 map[string]string
	swift                                    []byte
}

func codecMode(args []string) {
	if len(args) != 0 {
		fail("json takes no flags; it reads cases from stdin")
	}
	fmt.Printf("GO %s\n", runtime.Version())
	os.Stdout.Sync()
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 1<<24)
	for scanner.Scan() {
		line := scanner.Text()
		if line == "" {
			continue
		}
		c, err := parseCodecCase(line)
		if err != nil {
			fail("bad case line: " + err.Error())
		}
		fmt.Println(runCodecCase(c))
		os.Stdout.Sync()
	}
	if err := scanner.Err(); err != nil {
		fail("reading stdin: " + err.Error())
	}
}

func unhex(field string) (string, error) {
	b, err := hex.DecodeString(field)
	return string(b), err
}

func parseCodecCase(line string) (codecCase, error) {
	fields := strings.Split(line, "\t")
	if len(fields) != 9 {
		return codecCase{}, fmt.Errorf("%d fields, want 9", len(fields))
	}
	c := codecCase{id: fields[0], codec: fields[1]}
	var err error
	for i, target := range []*string{&c.name, &c.address} {
		if *target, err = unhex(fields[2+i]); err != nil {
			return c, err
		}
	}
	if c.weight, err = strconv.Atoi(fields[4]); err != nil {
		return c, err
	}
	if c.group, err = unhex(fields[5]); err != nil {
		return c, err
	}
	if c.version, err = unhex(fields[6]); err != nil {
		return c, err
	}
	c.metadata = map[string]string{}
	if fields[7] != "" {
		for _, pair := range strings.Split(fields[7], ",") {
			kv := strings.SplitN(pair, "=", 2)
			if len(kv) != 2 {
				return c, fmt.Errorf("metadata pair %q has no '='", pair)
			}
			key, err := unhex(kv[0])
			if err != nil {
				return c, err
			}
			value, err := unhex(kv[1])
			if err != nil {
				return c, err
			}
			c.metadata[key] = value
		}
	}
	if c.swift, err = hex.DecodeString(fields[8]); err != nil {
		return c, err
	}
	return c, nil
}

// strictUnmarshal is json.Unmarshal refusing unknown fields and trailing data.
func strictUnmarshal(data []byte, v interface{}) error {
	decoder := json.NewDecoder(bytes.NewReader(data))
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(v); err != nil {
		return err
	}
	if _, err := decoder.Token(); err != io.EOF {
		return fmt.Errorf("data after the value")
	}
	return nil
}

// metadataField writes a map as the protocol's metadata field, keys sorted by bytes.
func metadataField(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	pairs := make([]string, 0, len(keys))
	for _, k := range keys {
		pairs = append(pairs, hex.EncodeToString([]byte(k))+"="+hex.EncodeToString([]byte(m[k])))
	}
	return strings.Join(pairs, ",")
}

func mustMarshal(v interface{}) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		fail("json.Marshal: " + err.Error())
	}
	return b
}

func runCodecCase(c codecCase) string {
	var metadata map[string]string
	if len(c.metadata) > 0 {
		metadata = c.metadata
	}
	var goBytes, legacyBytes, remarshalled []byte
	var decoded goInstance
	var decodeErr error
	switch c.codec {
	case "json":
		goBytes = mustMarshal(goInstance{
			Name: c.name, Address: c.address, Weight: c.weight, Group: c.group,
			Metadata: metadata, Version: c.version,
		})
		legacyBytes = mustMarshal(legacyInstance{
			Name: c.name, Address: c.address, Weight: c.weight, Group: c.group, Metadata: metadata,
		})
		if decodeErr = strictUnmarshal(c.swift, &decoded); decodeErr == nil {
			remarshalled = mustMarshal(decoded)
		}
	case "naming":
		goBytes = mustMarshal(namingUpdate{
			Op:   0,
			Addr: c.address,
			Metadata: namingAttributes{
				Weight: c.weight, Group: c.group, Version: c.version, Metadata: metadata,
			},
		})
		var envelope namingEnvelope
		var attributes namingAttributes
		decodeErr = strictUnmarshal(c.swift, &envelope)
		if decodeErr == nil && envelope.Op != 0 {
			decodeErr = fmt.Errorf("Op is %d, not 0 (Add)", envelope.Op)
		}
		if decodeErr == nil {
			decodeErr = strictUnmarshal(envelope.Metadata, &attributes)
		}
		if decodeErr == nil {
			decoded = goInstance{
				Address: envelope.Addr, Weight: attributes.Weight, Group: attributes.Group,
				Metadata: attributes.Metadata, Version: attributes.Version,
			}
			remarshalled = mustMarshal(namingUpdate{Op: envelope.Op, Addr: envelope.Addr, Metadata: attributes})
		}
		// What etcd's resolver does with the value: Metadata into an interface{}.
		var generic namingUpdate
		if err := json.Unmarshal(c.swift, &generic); decodeErr == nil && err != nil {
			decodeErr = fmt.Errorf("as etcd reads it: %v", err)
		}
	default:
		fail("unknown codec " + c.codec + "; use json or naming")
	}
	errorField := ""
	if decodeErr != nil {
		errorField = hex.EncodeToString([]byte(decodeErr.Error()))
		decoded = goInstance{}
	}
	return strings.Join([]string{
		"RESULT " + c.id,
		hex.EncodeToString(goBytes),
		hex.EncodeToString(legacyBytes),
		errorField,
		hex.EncodeToString([]byte(decoded.Name)),
		hex.EncodeToString([]byte(decoded.Address)),
		strconv.Itoa(decoded.Weight),
		hex.EncodeToString([]byte(decoded.Group)),
		hex.EncodeToString([]byte(decoded.Version)),
		metadataField(decoded.Metadata),
		hex.EncodeToString(remarshalled),
	}, "\t")
}
