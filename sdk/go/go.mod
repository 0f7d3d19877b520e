module tinywasm

go 1.24
