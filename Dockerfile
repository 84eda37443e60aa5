# syntax=docker/dockerfile:1
# Static, non-root image. CI builds the same binary with the same command
# (scripts/build.sh), since Docker is not available there.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/portcullis ./cmd/portcullis

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/portcullis /portcullis
USER 65532:65532
WORKDIR /home/nonroot
VOLUME /home/nonroot/data
EXPOSE 8080 9090
ENTRYPOINT ["/portcullis"]
CMD ["serve", "--data-dir=/home/nonroot/data"]
