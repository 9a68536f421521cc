// The protoc plugins that proto/buf.gen.yaml runs, in a module of their own:
// protoc-gen-go's version is the generated code's, and a newer buf (tools/go.mod)
// must not move it. Keep google.golang.org/protobuf at a released version.
module github.com/keystore-dev/keystore/tools/protogen

go 1.25.0

require (
	google.golang.org/grpc/cmd/protoc-gen-go-grpc v1.6.2 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

tool (
	google.golang.org/grpc/cmd/protoc-gen-go-grpc
	google.golang.org/protobuf/cmd/protoc-gen-go
)
