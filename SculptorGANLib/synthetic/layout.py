"""Synthetic abdominal anatomy ("tissue layout") built around a real kidney/tumor labelmap.

The input is a KiTS-style labelmap (0 background, 1 kidney, 2 tumor) on a canonical grid: array
(z, y, x) with identity LPS direction (+x patient left, +y posterior, +z superior). Around the real
kidneys we draw a randomized body: skin/fat/muscle layers, vertebral column with canal, discs and
posterior elements, psoas/quadratus/back muscles, aorta and IVC with renal vessels, liver (patient
right), spleen (left), stomach, pancreas, colon and small-bowel loops (fluid, gas, oral contrast),
gallbladder, lung bases under a diaphragm dome, ribs, distractor blobs; inside the kidneys cortex,
medulla, a fatty renal sinus with collecting system and vessels in the hilum the label leaves open,
a perirenal fat rim that neighbours break through in places, and tumor texture with necrosis.
The output is an integer tissue map; :mod:`.intensity` turns it into CT-like Hounsfield units.
Shapes are evaluated on randomly warped coordinates so that organs are blobby, not ellipsoids.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# Tissue classes of the layout.
TISSUES = ["air", "subcut_fat", "muscle_wall", "visceral_fat", "cortex", "medulla", "tumor", "necrosis",
           "sinus_fat", "urine", "renal_vessel", "liver", "spleen", "bowel_wall", "bowel_fluid", "gas",
           "oral_contrast", "cancellous", "cortical_bone", "canal", "muscle", "aorta", "ivc", "lung",
           "gallbladder", "pancreas", "distractor", "disc", "perirenal_fat", "stomach_content"]
T = {name: i for i, name in enumerate(TISSUES)}
N_TISSUES = len(TISSUES)


def smooth_noise(shape, rng: np.random.Generator, scale_vox: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with correlation length ~``scale_vox`` voxels."""
    import torch

    low = tuple(max(2, int(np.ceil(s / max(scale_vox, 1.0))) + 1) for s in shape)
    field = torch.from_numpy(rng.standard_normal(low).astype(np.float32))[None, None]
    out = torch.nn.functional.interpolate(field, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()
    out = out - out.mean()
    return out / (out.std() + 1e-6)


class _Grid:
    """Millimetre coordinates of the grid, randomly warped to make shapes irregular."""

    def __init__(self, shape, spacing, rng, warp_mm: float):
        self.shape = shape
        zz, yy, xx = [np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing[::-1])]
        self.z0, self.y0, self.x0 = np.meshgrid(zz, yy, xx, indexing="ij", sparse=True)
        scale = 40.0 / min(spacing)
        self.z = self.z0 + warp_mm * smooth_noise(shape, rng, scale)
        self.y = self.y0 + warp_mm * smooth_noise(shape, rng, scale)
        self.x = self.x0 + warp_mm * smooth_noise(shape, rng, scale)

    def ellipsoid(self, c, r, warped=True) -> np.ndarray:
        x, y, z = (self.x, self.y, self.z) if warped else (self.x0, self.y0, self.z0)
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1

    def cylinder(self, c, r, zrange=None, warped=True, power: float = 2.0) -> np.ndarray:
        x, y, z = (self.x, self.y, self.z) if warped else (self.x0, self.y0, self.z0)
        m = np.abs((x - c[0]) / r[0]) ** power + np.abs((y - c[1]) / r[1]) ** power <= 1
        if zrange is not None:
            m = m & (z >= zrange[0]) & (z <= zrange[1])
        return np.broadcast_to(m, self.shape)

    def tube(self, p0, p1, radius) -> np.ndarray:
        """Voxels within ``radius`` mm of the segment p0–p1 (points (x, y, z) mm)."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        d = p1 - p0
        length2 = float(d @ d) + 1e-6
        t = ((self.x0 - p0[0]) * d[0] + (self.y0 - p0[1]) * d[1] + (self.z0 - p0[2]) * d[2]) / length2
        t = np.clip(t, 0, 1)
        dist2 = (self.x0 - p0[0] - t * d[0]) ** 2 + (self.y0 - p0[1] - t * d[1]) ** 2 + (self.z0 - p0[2] - t * d[2]) ** 2
        return np.broadcast_to(dist2 <= radius ** 2, self.shape)


def _kidney_geometry(labels: np.ndarray, spacing) -> dict:
    """Centroids (x, y, z mm) and extents of the (up to two) kidneys, and a midline estimate."""
    fg = labels > 0
    comps, n = ndimage.label(fg)
    sizes = ndimage.sum_labels(fg, comps, range(1, n + 1)) if n else np.zeros(0)
    order = np.argsort(sizes)[::-1][:2]
    sp = np.asarray(spacing[::-1])  # z, y, x
    kidneys = []
    for i in order:
        if sizes[i] < 0.1 * sizes[order[0]]:
            continue
        sl = ndimage.find_objects((comps == i + 1).astype(np.int8))[0]
        c = np.asarray(ndimage.center_of_mass(comps == i + 1)) * sp
        lo = np.array([s.start for s in sl]) * sp
        hi = np.array([s.stop for s in sl]) * sp
        kidneys.append({"c": c[::-1], "lo": lo[::-1], "hi": hi[::-1]})  # x, y, z
    centre = (np.asarray(labels.shape[::-1]) - 1) * np.asarray(spacing) / 2
    if len(kidneys) == 2 and abs(kidneys[0]["c"][0] - kidneys[1]["c"][0]) > 60:
        mid = (kidneys[0]["c"][0] + kidneys[1]["c"][0]) / 2
    elif kidneys:  # one kidney: it lies ~70 mm from the midline, on its own side of the grid centre
        cx = kidneys[0]["c"][0]
        mid = cx - np.sign(cx - centre[0]) * 75 if abs(cx - centre[0]) > 30 else centre[0]
    else:
        mid = centre[0]
    return {"kidneys": kidneys, "mid": float(mid), "centre": centre}


def make_layout(labels: np.ndarray, spacing=(3.0, 3.0, 3.0), rng: np.random.Generator | None = None) -> np.ndarray:
    """A tissue map (uint8, classes :data:`TISSUES`) around ``labels`` (0/1/2, canonical LPS grid)."""
    rng = rng or np.random.default_rng()
    U = rng.uniform
    shape = labels.shape
    g = _Grid(shape, spacing, rng, warp_mm=U(3, 9))
    geo = _kidney_geometry(labels, spacing)
    mid, kidneys = geo["mid"], geo["kidneys"]
    if kidneys:
        ky = float(np.mean([k["c"][1] for k in kidneys]))
        kz = float(np.mean([k["c"][2] for k in kidneys]))
        ktop = float(max(k["hi"][2] for k in kidneys))
        kbot = float(min(k["lo"][2] for k in kidneys))
        kpost = float(max(k["hi"][1] for k in kidneys))
        klat = float(max(max(abs(k["lo"][0] - mid), abs(k["hi"][0] - mid)) for k in kidneys))
    else:
        ky, kz = geo["centre"][1] + 20, geo["centre"][2]
        ktop, kbot, kpost, klat = kz + 50, kz - 50, ky + 30, 110
    zmax = shape[0] * spacing[2]
    out = np.full(shape, T["air"], dtype=np.uint8)

    # --- body wall: superellipse cross-section, posterior edge behind the kidneys
    vb_y = ky + U(-12, 12)
    vb_r = (U(15, 24), U(13, 20))
    back = max(kpost + U(25, 70), vb_y + vb_r[1] + U(55, 95))
    a_x = max(U(125, 190), klat + U(35, 70))
    b_y = U(95, 150)
    cy = back - b_y
    power = U(2.0, 2.8)
    body = g.cylinder((mid, cy), (a_x, b_y), power=power)
    t_sc, t_m = U(4, 45), U(6, 16)
    wall = g.cylinder((mid, cy), (a_x - t_sc, b_y - t_sc), power=power)
    cavity = g.cylinder((mid, cy), (a_x - t_sc - t_m, b_y - t_sc - t_m), power=power)
    out[body] = T["subcut_fat"]
    out[wall] = T["muscle_wall"]
    out[cavity] = T["visceral_fat"]

    # --- diaphragm and lung bases
    z_dia = ktop + U(-10, 70)
    dx = np.abs(g.x - mid)
    lung_floor = z_dia + 25 - 0.0025 * dx ** 2 - 0.25 * np.clip(g.y - ky, 0, None)
    lung = cavity & (g.z > lung_floor) & (g.y > cy - 0.4 * b_y) & (dx > 25)

    # --- solid organs (painted in order, later wins)
    liver_c = (mid - U(45, 90), ky - U(15, 55), ktop - U(-10, 40))
    liver = g.ellipsoid(liver_c, (U(70, 110), U(60, 95), U(65, 110))) & cavity & (g.x < mid + U(10, 60))
    out[liver] = T["liver"]
    if rng.random() < 0.6:
        gb = g.ellipsoid((liver_c[0] + U(10, 40), liver_c[1] - U(20, 50), liver_c[2] - U(30, 60)), (U(10, 20), U(10, 18), U(20, 40)))
        out[gb & liver] = T["gallbladder"]
    spleen = g.ellipsoid((mid + U(60, 105), ky + U(-20, 20), ktop - U(-20, 30)), (U(18, 35), U(30, 55), U(35, 65))) & cavity
    out[spleen] = T["spleen"]
    stomach_c = (mid + U(15, 70), ky - U(55, 100), ktop + U(-20, 40))
    stomach_r = (U(30, 60), U(25, 45), U(35, 60))
    stomach = g.ellipsoid(stomach_c, stomach_r) & cavity
    out[stomach] = T["bowel_wall"]
    t_w = U(0.75, 0.9)
    lumen = g.ellipsoid(stomach_c, [r * t_w for r in stomach_r]) & stomach
    out[lumen] = T[rng.choice(["stomach_content", "bowel_fluid", "oral_contrast"], p=[0.5, 0.3, 0.2])]
    if rng.random() < 0.7:
        out[lumen & (g.y < stomach_c[1] - U(0, 15))] = T["gas"]  # air-fluid level anteriorly
    pancreas = g.ellipsoid((mid + U(-10, 30), ky - U(25, 55), kz + U(0, 40)), (U(45, 75), U(8, 16), U(10, 20))) & cavity
    out[pancreas] = T["pancreas"]

    # --- bowel: colon along the flanks (often touching the kidneys) and small-bowel loops
    bubbles = smooth_noise(shape, rng, 1.2) > U(0.6, 1.4)  # gas bubbles in faeces

    def bowel(mask_outer, mask_inner):
        out[mask_outer & cavity] = T["bowel_wall"]
        content = rng.choice(["bowel_fluid", "gas", "oral_contrast", "stomach_content"], p=[0.3, 0.25, 0.15, 0.3])
        inner = mask_inner & cavity
        out[inner] = T[content]
        if content == "stomach_content":
            out[inner & bubbles] = T["gas"]

    for side in (-1, 1):
        if rng.random() < 0.85:
            k = [k for k in kidneys if np.sign(k["c"][0] - mid) == side]
            kx = k[0]["c"][0] if k else mid + side * 75
            cx, cyc = kx + side * U(10, 55), ky - U(-5, 45)
            r = U(12, 28)
            z0, z1 = kbot - U(0, 80), ktop + U(-30, 40)
            outer = g.cylinder((cx, cyc), (r, r * U(0.7, 1.1)), (z0, z1))
            inner = g.cylinder((cx, cyc), (r - U(2, 4), r * U(0.7, 1.1) - U(2, 4)), (z0, z1))
            bowel(outer, inner)
    for _ in range(int(U(6, 22))):
        c = (mid + U(-0.85, 0.85) * a_x, ky - U(20, 0.9 * b_y + 40), U(kbot - 80, ktop + 20))
        r = U(8, 26)
        rr = (r, r * U(0.6, 1.2), r * U(0.8, 2.0))
        bowel(g.ellipsoid(c, rr), g.ellipsoid(c, [v - U(2, 4) for v in rr]))

    out[lung] = T["lung"]

    # --- vessels
    ao_c, ao_r = (mid + U(3, 20), vb_y - vb_r[1] - U(8, 18)), U(7, 14)
    ivc_c, ivc_r = (mid - U(15, 32), vb_y - vb_r[1] - U(3, 14)), (U(8, 16), U(5, 12))
    out[g.cylinder(ao_c, (ao_r, ao_r), warped=False) & cavity] = T["aorta"]
    out[g.cylinder(ivc_c, ivc_r, (0, z_dia + 30)) & cavity] = T["ivc"]

    # --- spine: vertebral bodies with discs, cortex, canal, posterior elements; muscles
    seg_h = U(28, 36)
    phase = U(0, seg_h)
    disc = ((g.z0 + phase) % seg_h) < U(5, 9)
    vb = g.cylinder((mid, vb_y), vb_r, warped=False)
    vb_in = g.cylinder((mid, vb_y), (vb_r[0] - 2.5, vb_r[1] - 2.5), warped=False)
    canal_c = (mid, vb_y + vb_r[1] + U(7, 11))
    canal = g.cylinder(canal_c, (U(7, 11), U(6, 9)), warped=False)
    ring = g.cylinder(canal_c, (U(13, 18), U(11, 15)), warped=False) & ~canal
    spinous = g.cylinder((mid, canal_c[1] + U(18, 28)), (U(4, 7), U(12, 20)), warped=False)
    trans = g.cylinder((mid, canal_c[1] - U(0, 6)), (U(35, 55), U(4, 7)), warped=False) & (((g.z0 + phase) % seg_h) > seg_h * 0.6)
    for s in (-1, 1):
        ps_r = np.clip(U(7, 12) + (kz + 20 - g.z0) * U(0.08, 0.14), 6, 28)
        psoas = (((g.x - (mid + s * (vb_r[0] + ps_r * 0.75))) / ps_r) ** 2 + ((g.y - (vb_y + U(-4, 8))) / (ps_r * 1.1)) ** 2) <= 1
        out[np.broadcast_to(psoas, shape) & cavity] = T["muscle"]
        ql = g.cylinder((mid + s * U(45, 70), vb_y + U(15, 35)), (U(12, 22), U(7, 12)))
        out[ql & body] = T["muscle"]
        es = g.cylinder((mid + s * U(25, 38), canal_c[1] + U(10, 25)), (U(17, 30), U(15, 24)))
        out[es & body] = T["muscle"]
    out[trans & body] = T["cortical_bone"]
    out[vb] = T["cortical_bone"]
    out[vb_in] = T["cancellous"]
    out[vb & disc] = T["disc"]
    out[ring & ~disc] = T["cortical_bone"]
    out[spinous & body & ~disc] = T["cortical_bone"]
    out[canal] = T["canal"]

    # --- ribs: posterior-lateral arcs sloping down anteriorly, above the lower kidney half
    n_ribs = int(U(2, 6))
    ang = np.arctan2(g.x0 - mid, g.y0 - cy)  # 0 = straight back
    rad = np.sqrt(((g.x0 - mid) / (a_x - t_sc - t_m / 2)) ** 2 + ((g.y0 - cy) / (b_y - t_sc - t_m / 2)) ** 2)
    for i in range(n_ribs):
        z_r = kz + U(-20, 20) + i * U(25, 35)
        if z_r > zmax + 60:
            break
        zc = z_r - 25 * np.abs(ang)
        rib = (np.abs(rad - U(0.93, 1.0)) < 0.045) & (np.abs(g.z0 - zc) < U(4, 7)) & (np.abs(ang) > 0.35) & (np.abs(ang) < 2.2)
        out[np.broadcast_to(rib, shape)] = T["cortical_bone"]

    # --- distractors: kidney-like blobs elsewhere
    for _ in range(int(U(0, 4))):
        c = (mid + U(-0.8, 0.8) * a_x, ky - U(0, 0.9 * b_y), U(0, zmax))
        out[g.ellipsoid(c, (U(6, 25), U(6, 25), U(6, 30))) & cavity] = T["distractor"]

    # --- kidneys: perirenal fat rim (broken where neighbours touch), renal vessels, sinus, cortex/medulla, tumor
    fg = labels > 0
    if fg.any():
        sp = np.asarray(spacing[::-1])
        rim_mm = U(3, 18)
        dist_out = ndimage.distance_transform_edt(~fg, sampling=sp)
        rim = (dist_out <= rim_mm * (1 + 0.5 * smooth_noise(shape, rng, 6))) & body
        touching = smooth_noise(shape, rng, 5) > U(0.3, 1.5)
        keep_neighbour = np.isin(out, [T["liver"], T["spleen"], T["bowel_wall"], T["muscle"], T["pancreas"]]) & touching
        out[rim & ~keep_neighbour & ~np.isin(out, [T["cortical_bone"], T["cancellous"], T["canal"]])] = T["perirenal_fat"]
        kidney = labels == 1
        # renal sinus: what closing the kidney adds on its medial side
        rad_vox = int(round(U(9, 16) / spacing[0]))
        ball = _ball(rad_vox)
        closed = np.zeros_like(kidney)
        comps, n = ndimage.label(kidney)
        for i, sl in enumerate(ndimage.find_objects(comps)):
            pad = tuple(slice(max(0, s.start - rad_vox - 1), s.stop + rad_vox + 1) for s in sl)
            part = comps[pad] == i + 1
            closed[pad] |= ndimage.binary_closing(np.pad(part, rad_vox + 1), ball)[tuple(slice(rad_vox + 1, -rad_vox - 1) for _ in range(3))]
        sinus = closed & ~fg
        for k in kidneys:  # renal artery and vein from the hilum to the aorta and IVC
            hil = np.argwhere(sinus & (np.abs(g.x0 - k["c"][0]) < 40) & (np.abs(g.z0 - k["c"][2]) < 50))
            if len(hil):
                h = hil.mean(0) * sp
                p = (h[2], h[1], h[0])
            else:
                p = (k["c"][0] - np.sign(k["c"][0] - mid) * 20, k["c"][1] - 5, k["c"][2])
            out[g.tube(p, (ao_c[0], ao_c[1], p[2] + U(0, 15)), U(2, 4)) & body & ~fg] = T["renal_vessel"]
            out[g.tube(p, (ivc_c[0], ivc_c[1], p[2] + U(-10, 5)), U(3, 6)) & body & ~fg] = T["renal_vessel"]
        out[sinus] = T["sinus_fat"]
        if sinus.any():
            core = ndimage.binary_erosion(sinus, iterations=1) & (smooth_noise(shape, rng, 3) > U(-0.5, 0.8))
            out[core] = T["urine"]
            vessels = sinus & ~core & (smooth_noise(shape, rng, 2) > U(0.8, 1.6))
            out[vessels] = T["renal_vessel"]
        dist_in = ndimage.distance_transform_edt(kidney, sampling=sp)
        cortex_mm = U(3.5, 9)
        pyramids = smooth_noise(shape, rng, 2.5) > U(-0.6, 0.4)
        out[kidney] = T["cortex"]
        out[kidney & (dist_in > cortex_mm) & pyramids] = T["medulla"]
        tumor = labels == 2
        if tumor.any():
            out[tumor] = T["tumor"]
            dist_t = ndimage.distance_transform_edt(tumor, sampling=sp)
            necrotic = tumor & (dist_t > U(4, 15)) & (smooth_noise(shape, rng, 3) > U(-0.5, 1.5))
            out[necrotic] = T["necrosis"]
    return out


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius ** 2
