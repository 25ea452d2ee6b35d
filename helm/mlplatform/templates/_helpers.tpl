{{/*
Names. Every object is "<release>-<component>", like the official Airflow chart, so the
Airflow side can find e.g. MLflow at http://<release>-mlflow:5000.
*/}}
{{- define "mlplatform.name" -}}
{{- printf "%s-%s" .root.Release.Name .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlplatform.labels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: mlplatform
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "mlplatform.selectorLabels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/*
Image reference: a digest, when set, wins over the tag; the tag defaults to the chart's
appVersion (the project version). Call with (dict "image" .Values.images.features "root" $).
*/}}
{{- define "mlplatform.image" -}}
{{- $image := .image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (toString ($image.tag | default .root.Chart.AppVersion)) -}}
{{- end -}}
{{- end -}}

{{/* The MLflow tracking server's own image (images/mlflow): the GPU trainer image has no database driver. */}}
{{- define "mlplatform.mlflowImage" -}}
{{- include "mlplatform.image" (dict "image" .Values.mlflow.image "root" .) -}}
{{- end -}}

{{/* The Airflow image (for our pools hook Job), from the values the official chart reads. */}}
{{- define "mlplatform.airflowImage" -}}
{{- $af := .Values.airflow -}}
{{- $images := $af.images | default dict -}}
{{- $img := $images.airflow | default dict -}}
{{- $repo := $img.repository | default $af.defaultAirflowRepository -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else if $af.defaultAirflowDigest -}}
{{- printf "%s@%s" $repo $af.defaultAirflowDigest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString ($img.tag | default $af.defaultAirflowTag)) -}}
{{- end -}}
{{- end -}}

{{/* Restricted Pod Security Standard: the container part. */}}
{{- define "mlplatform.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Restricted Pod Security Standard: the pod part. Call with the numeric uid. */}}
{{- define "mlplatform.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Object store ------------------------------------------------------------------ */}}
{{- define "mlplatform.objectStoreEndpoint" -}}
{{- if .Values.objectStore.inCluster.enabled -}}
{{- printf "http://%s:9000" (include "mlplatform.name" (dict "root" . "component" "minio")) -}}
{{- else -}}
{{- .Values.objectStore.endpoint -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or "" when the
     pods get credentials some other way (IRSA, workload identity). */}}
{{- define "mlplatform.objectStoreSecretName" -}}
{{- if .Values.objectStore.existingSecret -}}
{{- .Values.objectStore.existingSecret -}}
{{- else if .Values.objectStore.accessKeyId -}}
{{- include "mlplatform.name" (dict "root" . "component" "object-store") -}}
{{- end -}}
{{- end -}}

{{- define "mlplatform.artifactRoot" -}}
{{- $prefix := trimAll "/" .Values.objectStore.prefix -}}
{{- if $prefix -}}
{{- printf "s3://%s/%s" .Values.objectStore.bucket $prefix -}}
{{- else -}}
{{- printf "s3://%s" .Values.objectStore.bucket -}}
{{- end -}}
{{- end -}}

{{/* In-cluster PostgreSQL (kind) ---------------------------------------------------- */}}
{{- define "mlplatform.postgresqlHost" -}}
{{- include "mlplatform.name" (dict "root" . "component" "postgresql") -}}
{{- end -}}

{{- define "mlplatform.postgresqlUri" -}}
{{- $pg := .root.Values.postgresql -}}
{{- printf "postgresql+psycopg://%s:%s@%s:5432/%s" $pg.auth.username $pg.auth.password (include "mlplatform.postgresqlHost" .root) .database -}}
{{- end -}}

{{/* Warehouse Secret (key `uri`) and MLflow backend Secret (key `uri`) -------------- */}}
{{- define "mlplatform.warehouseSecretName" -}}
{{- if .Values.warehouse.existingSecret -}}
{{- .Values.warehouse.existingSecret -}}
{{- else -}}
{{- include "mlplatform.name" (dict "root" . "component" "warehouse") -}}
{{- end -}}
{{- end -}}

{{- define "mlplatform.mlflowBackendSecretName" -}}
{{- if .Values.mlflow.backendStore.existingSecret -}}
{{- .Values.mlflow.backendStore.existingSecret -}}
{{- else -}}
{{- include "mlplatform.name" (dict "root" . "component" "mlflow-backend") -}}
{{- end -}}
{{- end -}}

{{- define "mlplatform.stepServiceAccountName" -}}
{{- if .Values.stepPods.serviceAccount.name -}}
{{- .Values.stepPods.serviceAccount.name -}}
{{- else -}}
{{- include "mlplatform.name" (dict "root" . "component" "step") -}}
{{- end -}}
{{- end -}}
