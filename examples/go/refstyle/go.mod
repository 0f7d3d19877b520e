module refstyle

go 1.24
