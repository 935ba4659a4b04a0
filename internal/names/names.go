// Package names makes and checks VM names and ids: random "adjective-noun" names
// such as cosmic-nova, DNS-label validation for names users choose, and short
// random ids that name a VM's directory and tap.
package names

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"regexp"
)

// adjectives and nouns are the design's word lists (space, tech and nature), then
// more words of the same three themes.
var adjectives = []string{
	"cosmic", "quantum", "stellar", "solar", "lunar", "orbital", "nebula", "cyber",
	"digital", "neural", "binary", "atomic", "photon", "plasma", "misty", "crystal",
	"amber", "coral", "forest", "arctic", "alpine", "galactic", "astral",
	"celestial", "radiant", "electric", "magnetic", "ionic", "sonic", "optic",
	"laser", "pixel", "vector", "analog", "kinetic", "polar", "boreal", "tidal",
	"verdant", "mossy", "frosty", "sunny", "stormy", "rainy", "dusky", "golden",
	"silver", "cobalt", "crimson", "emerald", "granite", "hidden", "silent",
	"swift", "bright", "ancient", "wild", "velvet", "glowing", "frozen", "rapid",
	"gentle",
}

var nouns = []string{
	"nova", "comet", "pulsar", "quasar", "aurora", "eclipse", "meteor", "circuit",
	"matrix", "nexus", "vertex", "tensor", "vector", "cipher", "river", "canyon",
	"glacier", "meadow", "reef", "grove", "peak", "galaxy", "nebula", "orbit",
	"zenith", "photon", "proton", "rocket", "satellite", "asteroid", "horizon",
	"cosmos", "signal", "kernel", "socket", "router", "beacon", "pixel", "lagoon",
	"delta", "fjord", "summit", "valley", "forest", "willow", "cedar", "fern",
	"brook", "harbor", "island", "tundra", "prairie", "mesa", "geyser", "ridge",
	"cove", "dune", "creek",
}

// Combinations is how many distinct adjective-noun names there are.
var Combinations = len(adjectives) * len(nouns)

func pick(list []string) string {
	n, err := rand.Int(rand.Reader, big.NewInt(int64(len(list))))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return list[n.Int64()]
}

// Random returns a random adjective-noun name.
func Random() string { return pick(adjectives) + "-" + pick(nouns) }

// Nth returns the i-th name in a fixed order (0 <= i < Combinations), for
// finding a free name when random picks keep colliding.
func Nth(i int) string {
	return adjectives[i/len(nouns)%len(adjectives)] + "-" + nouns[i%len(nouns)]
}

// Generate returns a name for which taken reports false: random picks first,
// then every combination in order, then combinations with a numeric suffix.
func Generate(taken func(string) bool) string {
	for i := 0; i < 32; i++ {
		if n := Random(); !taken(n) {
			return n
		}
	}
	for i := 0; i < Combinations; i++ {
		if n := Nth(i); !taken(n) {
			return n
		}
	}
	for suffix := 2; ; suffix++ {
		n := fmt.Sprintf("%s-%d", Random(), suffix)
		if !taken(n) {
			return n
		}
	}
}

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// reserved names would collide with fcm's own hostnames.
var reserved = map[string]bool{"fcm": true, "www": true, "localhost": true}

// ErrInvalidName is wrapped by every Validate error.
var ErrInvalidName = errors.New("invalid vm name")

// Validate accepts a DNS label: 1-63 of a-z, 0-9 and inner hyphens, not all
// digits, and not one of fcm's own hostnames.
func Validate(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidName)
	case len(name) > 63:
		return fmt.Errorf("%w: %d characters (at most 63)", ErrInvalidName, len(name))
	case !labelRE.MatchString(name):
		return fmt.Errorf("%w %q: use lowercase letters, digits and inner hyphens (a DNS label)", ErrInvalidName, name)
	case regexp.MustCompile(`^[0-9]+$`).MatchString(name):
		return fmt.Errorf("%w %q: all digits", ErrInvalidName, name)
	case reserved[name]:
		return fmt.Errorf("%w %q: reserved", ErrInvalidName, name)
	}
	return nil
}

const idAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

// NewID returns an 8-character [a-z0-9] id.
func NewID() string {
	b := make([]byte, 8)
	for i := range b {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(idAlphabet))))
		if err != nil {
			panic(err)
		}
		b[i] = idAlphabet[n.Int64()]
	}
	return string(b)
}

var idRE = regexp.MustCompile(`^[a-z0-9]{8}$`)

// ValidID reports whether id has the form NewID makes.
func ValidID(id string) bool { return idRE.MatchString(id) }
