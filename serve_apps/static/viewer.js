// A point-cloud viewer on a 2D canvas (no WebGL, no library): coloured points with a depth buffer,
// camera frusta and the camera path. Drag to rotate, wheel to zoom, double-click to reset.
//
// Input, the PointCloud JSON of vlm3r_core/point_cloud.py:
//   {points: [[x, y, z], ...], colors: [[r, g, b], ...], cameras: [[4x4 rows], ...], source: "..."}
// World in metres with Z up; cameras are camera-to-world poses with OpenCV axes (z forward, y down).
"use strict";

const VIEWER_BACKGROUND = [17, 24, 39];

class PointCloudViewer {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.cloud = null;
    this.resetView();
    let last = null;
    canvas.addEventListener("pointerdown", (e) => {
      last = [e.clientX, e.clientY];
      canvas.setPointerCapture(e.pointerId);
    });
    canvas.addEventListener("pointermove", (e) => {
      if (!last) return;
      this.yaw += (e.clientX - last[0]) * 0.01;
      this.pitch = Math.min(1.5, Math.max(-1.5, this.pitch + (e.clientY - last[1]) * 0.01));
      last = [e.clientX, e.clientY];
      this.draw();
    });
    canvas.addEventListener("pointerup", () => { last = null; });
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      this.zoom = Math.min(20, Math.max(0.2, this.zoom * Math.exp(-e.deltaY * 0.001)));
      this.draw();
    }, { passive: false });
    canvas.addEventListener("dblclick", () => { this.resetView(); this.draw(); });
    this.draw();
  }

  resetView() {
    this.yaw = -0.7;
    this.pitch = 0.6;
    this.zoom = 1;
  }

  // Checks and stores a cloud; throws an Error naming the bad field.
  load(cloud) {
    const points = cloud.points || [], colors = cloud.colors || [], cameras = cloud.cameras || [];
    if (!Array.isArray(points) || points.some((p) => !Array.isArray(p) || p.length !== 3)) {
      throw new Error("points: expected a list of [x, y, z]");
    }
    if (!Array.isArray(colors) || colors.length !== points.length) {
      throw new Error("colors: expected one [r, g, b] per point");
    }
    if (!Array.isArray(cameras) || cameras.some((m) => !Array.isArray(m) || m.length !== 4)) {
      throw new Error("cameras: expected a list of 4x4 camera-to-world matrices");
    }
    const xyz = new Float32Array(points.flat());
    const rgb = new Uint8ClampedArray(colors.flat());
    const centres = cameras.map((m) => [m[0][3], m[1][3], m[2][3]]);
    if (points.length + centres.length === 0) throw new Error("the cloud has no points and no cameras");
    const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    for (const p of points.concat(centres)) {
      for (let k = 0; k < 3; k++) {
        if (!Number.isFinite(p[k])) throw new Error("points and cameras must be finite numbers");
        lo[k] = Math.min(lo[k], p[k]);
        hi[k] = Math.max(hi[k], p[k]);
      }
    }
    const centre = lo.map((v, k) => (v + hi[k]) / 2);
    const radius = Math.max(0.5, Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) / 2);
    this.cloud = { xyz, rgb, cameras, centres, centre, radius, count: points.length };
    this.draw();
  }

  // World point -> [screen x, screen y, depth] (depth <= 0: behind the eye).
  project(p) {
    const { centre, radius } = this.cloud;
    const x = p[0] - centre[0], y = p[1] - centre[1], z = p[2] - centre[2];
    const cy = Math.cos(this.yaw), sy = Math.sin(this.yaw), cp = Math.cos(this.pitch), sp = Math.sin(this.pitch);
    const x1 = cy * x - sy * y, y1 = sy * x + cy * y;
    const depth = cp * y1 + sp * z + 3 * radius; // the eye looks along +y1, tilted down by pitch
    const up = -sp * y1 + cp * z;
    const f = (0.5 * Math.min(this.canvas.width, this.canvas.height) * 3 * this.zoom) / 0.9;
    return [this.canvas.width / 2 + (f * x1) / depth, this.canvas.height / 2 - (f * up) / depth, depth];
  }

  draw() {
    const { ctx, canvas } = this;
    const w = canvas.width, h = canvas.height;
    const image = ctx.createImageData(w, h);
    const px = image.data;
    for (let i = 0; i < w * h; i++) {
      px.set(VIEWER_BACKGROUND, 4 * i);
      px[4 * i + 3] = 255;
    }
    if (!this.cloud) {
      ctx.putImageData(image, 0, 0);
      ctx.fillStyle = "#9ca3af";
      ctx.font = "14px system-ui, sans-serif";
      ctx.fillText("No 3D data loaded", 16, 28);
      return;
    }
    const { xyz, rgb, count } = this.cloud;
    const zbuf = new Float32Array(w * h).fill(Infinity);
    for (let i = 0; i < count; i++) {
      const [sx, sy, d] = this.project([xyz[3 * i], xyz[3 * i + 1], xyz[3 * i + 2]]);
      if (d <= 0) continue;
      const x0 = Math.round(sx), y0 = Math.round(sy);
      for (let dy = 0; dy < 2; dy++) {
        for (let dx = 0; dx < 2; dx++) {
          const x = x0 + dx, y = y0 + dy;
          if (x < 0 || y < 0 || x >= w || y >= h || zbuf[y * w + x] <= d) continue;
          zbuf[y * w + x] = d;
          const o = 4 * (y * w + x);
          px[o] = rgb[3 * i];
          px[o + 1] = rgb[3 * i + 1];
          px[o + 2] = rgb[3 * i + 2];
        }
      }
    }
    ctx.putImageData(image, 0, 0);
    this.drawCameras();
  }

  drawCameras() {
    const { ctx } = this;
    const { cameras, centres, radius } = this.cloud;
    const s = 0.07 * radius; // frustum size in metres
    const corners = [[-1.33, -1, 1.6], [1.33, -1, 1.6], [1.33, 1, 1.6], [-1.33, 1, 1.6]]; // OpenCV camera axes
    ctx.lineWidth = 1.5;
    cameras.forEach((m, k) => {
      const t = cameras.length > 1 ? k / (cameras.length - 1) : 0; // white (first) to amber (last)
      ctx.strokeStyle = `rgb(255, ${Math.round(255 - 64 * t)}, ${Math.round(255 - 219 * t)})`;
      const c = this.project(centres[k]);
      const q = corners.map((v) => this.project([0, 1, 2].map((r) => m[r][0] * v[0] * s + m[r][1] * v[1] * s + m[r][2] * v[2] * s + m[r][3])));
      if (c[2] <= 0 || q.some((p) => p[2] <= 0)) return;
      ctx.beginPath();
      q.forEach((p) => { ctx.moveTo(c[0], c[1]); ctx.lineTo(p[0], p[1]); });
      ctx.moveTo(q[3][0], q[3][1]);
      q.forEach((p) => ctx.lineTo(p[0], p[1]));
      ctx.stroke();
    });
    ctx.lineWidth = 2.5;
    ctx.strokeStyle = "rgba(251, 191, 36, 0.9)";
    ctx.beginPath();
    centres.forEach((p, k) => {
      const [x, y] = this.project(p);
      if (k === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

window.PointCloudViewer = PointCloudViewer;
