// Package archtest holds the test that keeps the import graph of mtakit the
// one DESIGN.md describes: policy at the heart depending on nothing of ours,
// ready-made rules depending on policy only, go-smtp's types kept out of
// policy.
package archtest
