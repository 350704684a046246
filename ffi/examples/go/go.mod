module jumpset.example/agent

go 1.19
