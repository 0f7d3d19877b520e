module http_json

go 1.24
