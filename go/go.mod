module github.com/jumpset/jumpset/go

go 1.19
