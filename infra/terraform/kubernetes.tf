# In-cluster pieces: the Ray namespace and its IRSA service account, the KubeRay operator, the
# NVIDIA device plugin (advertises nvidia.com/gpu) and the cluster autoscaler (adds a node when a
# Ray pod is pending, removes idle ones; GPU groups go down to zero).

resource "kubernetes_namespace_v1" "ray" {
  metadata {
    name = var.ray_namespace
  }
}

resource "kubernetes_service_account_v1" "ray" {
  metadata {
    name      = var.ray_service_account
    namespace = kubernetes_namespace_v1.ray.metadata[0].name
    annotations = {
      "eks.amazonaws.com/role-arn" = module.ray_irsa.arn
    }
  }
  automount_service_account_token = false # Ray pods do not call the Kubernetes API; IRSA mounts its own token
}

resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_operator_version
  namespace        = "kuberay-system"
  create_namespace = true

  values = [yamlencode({
    nodeSelector = { "vlm3r.io/node-role" = "system" }
  })]

  depends_on = [module.eks]
}

resource "helm_release" "nvidia_device_plugin" {
  name             = "nvidia-device-plugin"
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = var.nvidia_device_plugin_version
  namespace        = "nvidia-device-plugin"
  create_namespace = true

  values = [yamlencode({
    nodeSelector = { "vlm3r.io/node-role" = "gpu" }
    affinity     = {}
    tolerations  = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
  })]

  depends_on = [module.eks]
}

resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = var.cluster_autoscaler_version
  namespace  = "kube-system"

  values = [yamlencode({
    cloudProvider = "aws"
    awsRegion     = var.region
    autoDiscovery = { clusterName = module.eks.cluster_name }
    nodeSelector  = { "vlm3r.io/node-role" = "system" }
    rbac = {
      serviceAccount = {
        name        = "cluster-autoscaler"
        annotations = { "eks.amazonaws.com/role-arn" = module.cluster_autoscaler_irsa.arn }
      }
    }
    extraArgs = {
      expander                      = "least-waste"
      balance-similar-node-groups   = true
      skip-nodes-with-local-storage = false # Ray pods keep their object store spill in emptyDir
      scale-down-unneeded-time      = "10m"
    }
  })]

  depends_on = [module.eks]
}
