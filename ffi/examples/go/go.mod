module jumpset.example/agent

go 1.19

require github.com/jumpset/jumpset/go v0.0.0

// The package of this repository; an agent elsewhere drops this line and requires a
// released version.
replace github.com/jumpset/jumpset/go => ../../../go
