{{/* Names and labels. */}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The embedded store is used when no external etcd endpoint is given. */}}
{{- define "portcullis.embedded" -}}
{{- if not .Values.etcd.endpoints -}}true{{- end -}}
{{- end -}}

{{/* Where files land in the container. */}}
{{- define "portcullis.configDir" -}}/etc/portcullis/config{{- end -}}
{{- define "portcullis.secretsDir" -}}/etc/portcullis/secrets{{- end -}}
{{- define "portcullis.dataDir" -}}/var/lib/portcullis{{- end -}}

{{/*
Refuses values that cannot work. Included by every template that depends on
them, so `helm template` and `helm install` stop with the message.
*/}}
{{- define "portcullis.validate" -}}
{{- if and (include "portcullis.embedded" .) (gt (int .Values.replicaCount) 1) -}}
{{- fail (printf "replicaCount %d needs external etcd: the embedded store lives in one pod's volume, so more replicas would each see different data. Set etcd.endpoints, or replicaCount 1." (int .Values.replicaCount)) -}}
{{- end -}}
{{- with .Values.etcd.tlsSecret -}}
{{- if and .name (ne (empty .certKey) (empty .keyKey)) -}}
{{- fail "etcd.tlsSecret: give both certKey and keyKey (a client certificate and its key), or neither" -}}
{{- end -}}
{{- end -}}
{{- $owned := list "listen" "metrics_listen" "grpc_listen" "data_dir" "etcd_endpoints" "etcd_prefix" "etcd_username" "etcd_password" "etcd_password_file" "etcd_ca_file" "etcd_cert_file" "etcd_key_file" "etcd_dial_timeout" "admin_password" "admin_password_file" "jwt_secret_file" "routes" "shadow_routes" -}}
{{- range $key, $_ := .Values.config -}}
{{- if has $key $owned -}}
{{- fail (printf "config.%s is set by the chart: use the chart's own values (ports, etcd, adminPassword, jwtSecret, routes, shadowRoutes); secrets never go into the ConfigMap" $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The configuration file of `portcullis serve`, as YAML. */}}
{{- define "portcullis.config" -}}
{{- $secrets := include "portcullis.secretsDir" . -}}
{{- $cfg := dict "listen" (printf ":%d" (int .Values.ports.http)) "metrics_listen" (printf ":%d" (int .Values.ports.metrics)) "etcd_prefix" .Values.etcd.prefix -}}
{{- if gt (int .Values.ports.grpc) 0 -}}
{{- $_ := set $cfg "grpc_listen" (printf ":%d" (int .Values.ports.grpc)) -}}
{{- end -}}
{{- if include "portcullis.embedded" . -}}
{{- $_ := set $cfg "data_dir" (include "portcullis.dataDir" .) -}}
{{- else -}}
{{- $_ := set $cfg "etcd_endpoints" .Values.etcd.endpoints -}}
{{- $_ := set $cfg "etcd_dial_timeout" .Values.etcd.dialTimeout -}}
{{- with .Values.etcd.username -}}{{- $_ := set $cfg "etcd_username" . -}}{{- end -}}
{{- if .Values.etcd.passwordSecret.name -}}
{{- $_ := set $cfg "etcd_password_file" (printf "%s/etcd-password" $secrets) -}}
{{- end -}}
{{- with .Values.etcd.tlsSecret -}}
{{- if .name -}}
{{- if .caKey -}}{{- $_ := set $cfg "etcd_ca_file" (printf "%s/etcd-ca.crt" $secrets) -}}{{- end -}}
{{- if .certKey -}}{{- $_ := set $cfg "etcd_cert_file" (printf "%s/etcd-client.crt" $secrets) -}}{{- end -}}
{{- if .keyKey -}}{{- $_ := set $cfg "etcd_key_file" (printf "%s/etcd-client.key" $secrets) -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if .Values.adminPassword.existingSecret -}}
{{- $_ := set $cfg "admin_password_file" (printf "%s/admin-password" $secrets) -}}
{{- end -}}
{{- if .Values.jwtSecret.existingSecret -}}
{{- $_ := set $cfg "jwt_secret_file" (printf "%s/jwt-secret" $secrets) -}}
{{- end -}}
{{- with .Values.routes -}}{{- $_ := set $cfg "routes" . -}}{{- end -}}
{{- with .Values.shadowRoutes -}}{{- $_ := set $cfg "shadow_routes" . -}}{{- end -}}
{{- range $key, $value := .Values.config -}}
{{- $_ := set $cfg $key $value -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The projected secret files, one list of sources. */}}
{{- define "portcullis.secretSources" -}}
{{- if .Values.adminPassword.existingSecret }}
- secret:
    name: {{ .Values.adminPassword.existingSecret }}
    items:
      - key: {{ .Values.adminPassword.key }}
        path: admin-password
{{- end }}
{{- if .Values.jwtSecret.existingSecret }}
- secret:
    name: {{ .Values.jwtSecret.existingSecret }}
    items:
      - key: {{ .Values.jwtSecret.key }}
        path: jwt-secret
{{- end }}
{{- if not (include "portcullis.embedded" .) }}
{{- if .Values.etcd.passwordSecret.name }}
- secret:
    name: {{ .Values.etcd.passwordSecret.name }}
    items:
      - key: {{ .Values.etcd.passwordSecret.key }}
        path: etcd-password
{{- end }}
{{- with .Values.etcd.tlsSecret }}
{{- if .name }}
- secret:
    name: {{ .name }}
    items:
      {{- if .caKey }}
      - key: {{ .caKey }}
        path: etcd-ca.crt
      {{- end }}
      {{- if .certKey }}
      - key: {{ .certKey }}
        path: etcd-client.crt
      {{- end }}
      {{- if .keyKey }}
      - key: {{ .keyKey }}
        path: etcd-client.key
      {{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The pod template shared by the Deployment and the StatefulSet. */}}
{{- define "portcullis.podTemplate" -}}
metadata:
  labels:
    {{- include "portcullis.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Rolls the pods when the configuration changes.
    checksum/config: {{ include "portcullis.config" . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "portcullis.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: portcullis
      image: {{ include "portcullis.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - serve
        - --config={{ include "portcullis.configDir" . }}/portcullis.yaml
      ports:
        - name: http
          containerPort: {{ .Values.ports.http }}
          protocol: TCP
        - name: metrics
          containerPort: {{ .Values.ports.metrics }}
          protocol: TCP
        {{- if gt (int .Values.ports.grpc) 0 }}
        - name: grpc
          containerPort: {{ .Values.ports.grpc }}
          protocol: TCP
        {{- end }}
      {{- with .Values.startupProbe }}
      startupProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      livenessProbe:
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      readinessProbe:
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: {{ include "portcullis.configDir" . }}
          readOnly: true
        {{- if include "portcullis.secretSources" . }}
        - name: secrets
          mountPath: {{ include "portcullis.secretsDir" . }}
          readOnly: true
        {{- end }}
        {{- if include "portcullis.embedded" . }}
        - name: data
          mountPath: {{ include "portcullis.dataDir" . }}
        {{- end }}
        # The root file system is read-only; anything that needs scratch space gets this.
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: config
      configMap:
        name: {{ include "portcullis.fullname" . }}
    {{- with include "portcullis.secretSources" . }}
    - name: secrets
      projected:
        # Readable by the group (fsGroup), not by others.
        defaultMode: 0440
        sources:
          {{- . | trim | nindent 10 }}
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if include "portcullis.embedded" . }}
    {{- if .Values.persistence.existingClaim }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ .Values.persistence.existingClaim }}
    {{- else if not .Values.persistence.enabled }}
    # persistence.enabled=false: the store is lost with the pod (tests, demos).
    - name: data
      emptyDir: {}
    {{- end }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
