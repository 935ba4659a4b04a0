package daemon

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/fcmhost/fcm/internal/store"
)

// TestRemoveUser_TakesVMsByID (L3): users rm lists the user's VMs and takes
// them from the user in the transaction that removes the user, and destroys
// them by id; without vms= nothing changes.
func TestRemoveUser_TakesVMsByID(t *testing.T) {
	for _, choice := range []string{"keep", "destroy"} {
		t.Run(choice, func(t *testing.T) {
			f := newFixture(t)
			secret := store.NewSecret()
			err := f.store.Update(func(tx *store.Tx) error {
				tx.PutUser(&store.User{ID: "u_dana", Email: "dana@example.com"})
				tx.PutToken(secret, &store.Token{ID: "t_dana", User: "u_dana"})
				tx.InsertVM(&store.VM{ID: "dddd1111", Name: "dana-one", Owner: "u_dana", State: "running", IP: "172.16.0.60"})
				return tx.InsertVM(&store.VM{ID: "dddd2222", Name: "dana-two", Owner: "u_dana", State: "creating", IP: "172.16.0.61"})
			})
			if err != nil {
				t.Fatal(err)
			}
			f.fake.destroy = func(context.Context, string) error { return nil }
			ctx := context.Background()

			if _, err := f.client.RemoveUser(ctx, "dana@example.com", ""); err == nil || !strings.Contains(err.Error(), "dana@example.com owns 2 VMs (dana-one, dana-two)") {
				t.Fatalf("users rm without vms=: %v", err)
			}
			f.store.View(func(tx *store.Tx) error {
				if _, err := tx.User("u_dana"); err != nil {
					t.Errorf("a refused users rm removed the user: %v", err)
				}
				return nil
			})

			out, err := f.client.RemoveUser(ctx, "dana@example.com", choice)
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"dana-one", "dana-two"}
			got := out.VMsKept
			if choice == "destroy" {
				got = out.VMsDestroyed
				if d := f.fake.destroyed; !slices.Equal(d, []string{"dana-one/dddd1111", "dana-two/dddd2222"}) {
					t.Errorf("destroyed %v, want each by its id", d)
				}
			} else if len(f.fake.destroyed) != 0 {
				t.Errorf("keep destroyed %v", f.fake.destroyed)
			}
			if !slices.Equal(got, want) || out.TokensRevoked != 1 {
				t.Errorf("response %+v", out)
			}
			f.store.View(func(tx *store.Tx) error {
				if _, err := tx.User("u_dana"); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("user after users rm: %v", err)
				}
				for _, name := range want {
					if v, err := tx.VM(name); err != nil || v.Owner != "admin" {
						t.Errorf("vm %s after users rm: %+v, %v; want the admin's (the fake destroys nothing)", name, v, err)
					}
				}
				return nil
			})
		})
	}
}
