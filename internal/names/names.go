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

var adjectives = []string{
	"amber", "ancient", "autumn", "bold", "brave", "bright", "calm", "clever",
	"cosmic", "crimson", "crisp", "dawn", "deep", "eager", "electric", "emerald",
	"fancy", "fast", "gentle", "golden", "green", "happy", "hidden", "icy",
	"jolly", "keen", "kind", "lively", "lucky", "lunar", "mellow", "misty",
	"noble", "odd", "patient", "polar", "proud", "quiet", "rapid", "restless",
	"royal", "rustic", "shiny", "silent", "silver", "solar", "spring", "steady",
	"stellar", "still", "sunny", "swift", "tidy", "tiny", "twilight", "velvet",
	"vivid", "wandering", "warm", "wild", "winter", "wise", "young", "zesty",
}

var nouns = []string{
	"aurora", "badger", "bay", "breeze", "brook", "canyon", "cedar", "cloud",
	"comet", "coral", "cove", "crater", "creek", "delta", "dune", "eagle",
	"ember", "falcon", "fern", "field", "fjord", "flame", "forest", "frost",
	"galaxy", "glacier", "grove", "harbor", "hawk", "heron", "hill", "island",
	"lagoon", "lake", "leaf", "meadow", "mesa", "meteor", "moon", "moss",
	"nebula", "nova", "oak", "ocean", "orbit", "otter", "peak", "pine",
	"planet", "pond", "prairie", "quasar", "rain", "reef", "ridge", "river",
	"sky", "snow", "star", "stone", "sun", "thunder", "tide", "willow",
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
