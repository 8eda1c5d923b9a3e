// Drives OHIF (served by dsm_node.viewer) in headless Chromium with playwright-core and
// records what a radiologist would see, as data + screenshots, for tests/viewer/ohif_checks.py.
//
//   node ohif_driver.cjs SPEC.json
//
// SPEC: {baseUrl, chromium, outDir, width, height, loadTimeoutMs, cases: [{name, viewerPath,
//        srSeriesUID?, srSearchTerms?, maxSegments?, hiddenShots?,
//        probes: {<segmentNumber>: [worldPositionOfSlice, ...]},
//        skipSeg?, overlapProbes?: [worldPosition, ...], srViewPath?, srViewSeriesUID?,
//        scSeriesUID?}]}
// skipSeg: no SEG steps (a case that only opens its SR); overlapProbes: views with every
// segment shown at these positions (a tumour over its organ); srViewPath: the study opened
// with the SR as the initial series, each of OHIF's SR measurements stepped through with the
// viewport's arrows (what is drawn, where, with which text); scSeriesUID: the key images.
// (dsm_node/viewer/session.py writes it.) All cases run in one persistent browser context
// (fresh profile directory, so OHIF's scripts come from the disk cache after the first case).
// Writes OUTDIR/observations.json and PNG screenshots. Everything the Python checks need
// is read from the page through the objects OHIF puts on window:
//   window.services.segmentationService  segments (label, colour), jump-to-segment state
//   window.cornerstone                   rendering engine -> viewport: getCurrentImageId(),
//                                         getCurrentImageIdIndex(), worldToCanvas(),
//                                         metaData.get('imagePlaneModule', imageId)
//   window.cornerstoneTools.segmentation the labelmap images OHIF built from the SEG
//   window.services.displaySetService    the SR display set (OHIF's own TID 1500 parser)
// and, as a cross-check, the viewport overlay text ("I:50 (50/79)") and the segment panel DOM.
'use strict';
const fs = require('fs');
const path = require('path');

let chromium;
try {
  ({ chromium } = require('playwright-core'));
} catch (e) {
  console.error('playwright-core not found: run scripts/install-viewer.sh and set NODE_PATH');
  process.exit(3);
}

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const OUT = spec.outDir;
fs.mkdirSync(OUT, { recursive: true });

const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-default-apps', '--disable-extensions', '--disable-domain-reliability',
  '--disable-client-side-phishing-detection', '--no-default-browser-check',
  '--enable-unsafe-swiftshader', '--use-angle=swiftshader',
  '--metrics-recording-only', '--password-store=basic',
];

const t0 = Date.now();
const elapsed = () => (Date.now() - t0) / 1000;
function log(...a) { console.log(`[driver ${elapsed().toFixed(1)}s]`, ...a); }

async function settle(page, ms = 120) {
  const ts = Date.now();
  // Let cornerstone finish the render triggered by the last state change.
  await page.evaluate(() => new Promise(r => requestAnimationFrame(() =>
    requestAnimationFrame(() => requestAnimationFrame(r)))));
  if (process.env.DSM_DRIVER_DEBUG) log('settle raf', Date.now() - ts, 'ms');
  await page.waitForTimeout(ms);
}

// ---------------------------------------------------------------- in-page helpers
// Installed once per page load; all return plain JSON.
const PAGE_HELPERS = () => {
  const cs = window.cornerstone;
  const ct = window.cornerstoneTools;
  const S = window.services;
  const H = {};
  H.viewport = () => {
    const { activeViewportId } = S.viewportGridService.getState();
    const vp = S.cornerstoneViewportService.getCornerstoneViewport(activeViewportId);
    return vp;
  };
  H.segmentation = () => S.segmentationService.getSegmentations()[0];
  H.segments = () => {
    const seg = H.segmentation();
    const vp = H.viewport();
    const reps = S.segmentationService.getSegmentationRepresentations(vp.id,
      { segmentationId: seg.segmentationId });
    const rep = reps[0] || {};
    return Object.values(seg.segments).filter(Boolean).map(s => ({
      segmentIndex: s.segmentIndex, label: s.label,
      color: (rep.segments && rep.segments[s.segmentIndex] && rep.segments[s.segmentIndex].color) ||
        S.segmentationService.getSegmentColor(vp.id, seg.segmentationId, s.segmentIndex),
      center: s.cachedStats && s.cachedStats.center ? s.cachedStats.center.world : null,
    }));
  };
  H.state = () => {
    const vp = H.viewport();
    const imageId = vp.getCurrentImageId();
    const plane = cs.metaData.get('imagePlaneModule', imageId);
    const inst = cs.metaData.get('instance', imageId) || {};
    const ipp = plane.imagePositionPatient;
    const iop = plane.imageOrientationPatient;
    const [dr, dc] = [plane.rowPixelSpacing, plane.columnPixelSpacing];
    // world -> canvas for three voxel centres of this slice: (r,c) = (0,0), (0,1), (1,0).
    const w = (r, c) => [0, 1, 2].map(i => ipp[i] + c * dc * iop[i] + r * dr * iop[3 + i]);
    const canvas = vp.canvas;
    const rect = canvas.getBoundingClientRect();
    const overlay = document.querySelector('[data-cy="viewport-overlay-bottom-right"]');
    return {
      viewportId: vp.id, viewportType: vp.type,
      imageIndex: vp.getCurrentImageIdIndex(), numImages: vp.getImageIds().length,
      sopInstanceUID: inst.SOPInstanceUID || null,
      ipp, iop, rows: plane.rows, columns: plane.columns, pixelSpacing: [dr, dc],
      canvasOfVoxel: { '0,0': vp.worldToCanvas(w(0, 0)), '0,1': vp.worldToCanvas(w(0, 1)),
                       '1,0': vp.worldToCanvas(w(1, 0)) },
      canvasRect: [rect.x, rect.y, rect.width, rect.height],
      devicePixelRatio: window.devicePixelRatio,
      overlayText: overlay ? overlay.innerText.replace(/\s+/g, ' ').trim() : null,
      focalPoint: vp.getCamera().focalPoint,
    };
  };
  // Only segment `index` visible (index = null: all segments visible; false: none).
  H.showOnly = (index) => {
    const vp = H.viewport();
    const seg = H.segmentation();
    const spec = { segmentationId: seg.segmentationId, type: 'Labelmap' };
    if (index === false) {
      ct.segmentation.config.visibility.setSegmentationRepresentationVisibility(vp.id, spec, false);
    } else {
      ct.segmentation.config.visibility.setSegmentationRepresentationVisibility(vp.id, spec, true);
      for (const s of Object.values(seg.segments).filter(Boolean)) {
        S.segmentationService.setSegmentVisibility(vp.id, seg.segmentationId, s.segmentIndex,
          index === null || s.segmentIndex === index, 'Labelmap');
      }
    }
    vp.render();
  };
  H.style = () => {
    const vp = H.viewport();
    const seg = H.segmentation();
    const reps = S.segmentationService.getSegmentationRepresentations(vp.id,
      { segmentationId: seg.segmentationId });
    return reps[0] ? reps[0].styles || null : null;
  };
  H.goToPosition = (pos) => {
    // Show the image whose ImagePositionPatient is closest to `pos` (world, mm).
    const vp = H.viewport();
    const ids = vp.getImageIds();
    let best = -1, bestD = Infinity;
    ids.forEach((id, i) => {
      const p = cs.metaData.get('imagePlaneModule', id).imagePositionPatient;
      const d = Math.hypot(p[0] - pos[0], p[1] - pos[1], p[2] - pos[2]);
      if (d < bestD) { bestD = d; best = i; }
    });
    return vp.setImageIdIndex(best).then(() => ({ index: best, distance: bestD }));
  };
  // What OHIF built from the SEG: for every image of the viewport, per segment index, the
  // voxel count, centroid (row, col) and bounding box of the labelmap.
  H.labelmapStats = () => {
    const vp = H.viewport();
    const seg = H.segmentation();
    const out = [];
    for (const imageId of vp.getImageIds()) {
      const plane = cs.metaData.get('imagePlaneModule', imageId);
      const lmIds = ct.segmentation.getLabelmapImageIdsForImageId(imageId, seg.segmentationId) || [];
      const stats = {};
      for (const lmId of [].concat(lmIds)) {
        const img = cs.cache.getImage(lmId);
        if (!img) continue;
        const data = img.voxelManager ? img.voxelManager.getScalarData() : img.getPixelData();
        const cols = img.columns;
        for (let k = 0; k < data.length; k++) {
          const v = data[k];
          if (!v) continue;
          const r = (k / cols) | 0, c = k - r * cols;
          let s = stats[v];
          if (!s) s = stats[v] = { n: 0, sr: 0, sc: 0, r0: r, r1: r, c0: c, c1: c };
          s.n++; s.sr += r; s.sc += c;
          if (r < s.r0) s.r0 = r; if (r > s.r1) s.r1 = r;
          if (c < s.c0) s.c0 = c; if (c > s.c1) s.c1 = c;
        }
      }
      const segs = {};
      for (const [v, s] of Object.entries(stats)) {
        segs[v] = { n: s.n, centroid: [s.sr / s.n, s.sc / s.n], bbox: [s.r0, s.c0, s.r1, s.c1] };
      }
      out.push({ ipp: plane.imagePositionPatient, labelmapImages: [].concat(lmIds).length,
                 segments: segs });
    }
    return out;
  };
  window.__dsm = H;
};

// ---------------------------------------------------------------- one case
// One browser context for all cases, so OHIF's scripts come from the HTTP cache after the
// first load; its request/console events go to the case being run.
let current = null;
let currentPage = null;
async function newContext() {
  // A persistent context (fresh profile directory) has a disk HTTP cache; the default
  // incognito-like context keeps only a small in-memory cache that OHIF's 17 MB bundle does
  // not fit in, so every case would fetch and compile the whole viewer again.
  const profile = fs.mkdtempSync(path.join(require('os').tmpdir(), 'dsm-ohif-profile-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: spec.chromium || '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS,
    viewport: { width: spec.width || 1400, height: spec.height || 900 },
    deviceScaleFactor: 1, serviceWorkers: 'block',
  });
  context.profileDir = profile;
  // Every request the pages or their workers make.
  context.on('request', r => current && current.requests.push(r.url()));
  context.on('requestfailed', r => current &&
    current.failedRequests.push([r.url(), (r.failure() || {}).errorText]));
  return context;
}

async function runCase(context, c) {
  const obs = { name: c.name, url: spec.baseUrl + c.viewerPath, console: [], pageErrors: [],
                requests: [], failedRequests: [], screenshots: {}, timings: {} };
  current = obs;
  const page = currentPage = await context.newPage();
  page.on('console', m => {
    if (m.type() === 'error' || m.type() === 'warning') {
      obs.console.push({ type: m.type(), text: m.text().slice(0, 2000),
                         url: (m.location() || {}).url || '' });
    }
  });
  page.on('pageerror', e => obs.pageErrors.push(String(e && e.stack || e).slice(0, 2000)));

  // Full-page screenshot (what the radiologist sees, DOM overlays included).
  const shot = async (key) => {
    const file = path.join(OUT, `${c.name}__${key}.png`);
    const ts = Date.now();
    await page.screenshot({ path: file, caret: 'hide' });
    if (process.env.DSM_DRIVER_DEBUG) log('screenshot', key, Date.now() - ts, 'ms');
    obs.screenshots[key] = path.basename(file);
    return file;
  };
  // The viewport's own canvas: the pixels cornerstone drew (CT + labelmap), without the DOM
  // text/icons OHIF lays over it. cornerstone renders off-screen with WebGL and copies each
  // viewport into this 2D canvas, so toDataURL returns exactly what is displayed.
  const canvasShot = async (key) => {
    const file = path.join(OUT, `${c.name}__${key}.png`);
    const url = await page.evaluate(() => window.__dsm.viewport().canvas.toDataURL('image/png'));
    fs.writeFileSync(file, Buffer.from(url.slice(url.indexOf(',') + 1), 'base64'));
    obs.screenshots[key] = path.basename(file);
    return file;
  };

  let t = Date.now();
  if (c.skipSeg) {
    await page.close();
    await srView(context, c, obs);
    return obs;
  }
  await page.goto(obs.url, { waitUntil: 'domcontentloaded' });
  // SEG loaded, its labelmap shown in the active viewport, and the image rendered.
  await page.waitForFunction(() => {
    const S = window.services;
    if (!S || !window.cornerstone || !S.segmentationService) return false;
    const segs = S.segmentationService.getSegmentations();
    if (!segs.length) return false;
    const { activeViewportId } = S.viewportGridService.getState();
    const vp = S.cornerstoneViewportService.getCornerstoneViewport(activeViewportId);
    if (!vp || !vp.getCurrentImageId || !vp.getCurrentImageId()) return false;
    const reps = S.segmentationService.getSegmentationRepresentations(vp.id);
    return reps.length > 0;
  }, null, { timeout: spec.loadTimeoutMs || 120000, polling: 250 });
  obs.timings.loadSeg = (Date.now() - t) / 1000;
  await page.evaluate(PAGE_HELPERS);
  await settle(page, 500);

  // Segment panel, as the radiologist opens it.
  t = Date.now();
  await page.click('[data-cy="panelSegmentation-btn"]');
  await page.waitForSelector('[data-cy="data-row"]', { timeout: 30000 });
  await settle(page, 300);
  obs.panelRows = await page.$$eval('[data-cy="data-row"]', els => els.map(e => {
    const title = e.querySelector('[data-cy="data-row-title"]');
    const dot = e.querySelector('[data-cy="data-row-colorhex"]');
    return { text: title ? title.textContent.trim() : e.innerText.trim(),
             number: (e.firstElementChild && e.innerText.trim().split(/\s+/)[0]) || null,
             color: dot ? getComputedStyle(dot).backgroundColor : null };
  }));
  obs.segments = await page.evaluate(() => window.__dsm.segments());
  obs.segmentationLabel = await page.evaluate(() => window.__dsm.segmentation().label);
  obs.style = await page.evaluate(() => window.__dsm.style());
  obs.initialState = await page.evaluate(() => window.__dsm.state());
  await shot('overview');
  obs.labelmap = await page.evaluate(() => window.__dsm.labelmapStats());
  obs.timings.panel = (Date.now() - t) / 1000;

  // Each segment: click its row (OHIF jumps to the segment and highlights it).
  t = Date.now();
  obs.perSegment = [];
  const nRows = Math.min(obs.panelRows.length,
    c.maxSegments === undefined || c.maxSegments === null ? Infinity : c.maxSegments);
  obs.maxSegments = c.maxSegments === undefined ? null : c.maxSegments;
  for (let i = 0; i < nRows; i++) {
    const seg = obs.segments[i];
    const rec = { row: i, label: obs.panelRows[i].text, segmentIndex: seg ? seg.segmentIndex : null,
                  probes: [] };
    await page.locator('[data-cy="data-row"]').nth(i).click();
    // jumpToSegmentCenter + a 750 ms highlight animation (requestAnimationFrame-driven, so
    // one more frame after 750 ms ends it); wait for it to finish.
    await page.waitForTimeout(850);
    await settle(page, 150);
    rec.state = await page.evaluate(() => window.__dsm.state());
    rec.style = await page.evaluate(() => window.__dsm.style());
    // As displayed (all segments visible, this one active): kept for people to look at.
    rec.screenshotFull = path.basename(await shot(`seg${i + 1}_clicked`));
    if (seg) {
      // For the pixel checks only this segment is shown, so every coloured pixel is its
      // overlay (ohif_checks.analyse_overlay tells overlay from the grey CT by its colour).
      // hiddenShots adds the same view with the segmentation hidden (exact background).
      const only = async (key) => {
        const r = { screenshotOnly: path.basename(await canvasShot(`${key}_only`)) };
        if (c.hiddenShots) {
          await page.evaluate(() => window.__dsm.showOnly(false));
          await settle(page);
          r.screenshotNone = path.basename(await canvasShot(`${key}_none`));
          await page.evaluate(ix => window.__dsm.showOnly(ix), seg.segmentIndex);
        }
        return r;
      };
      await page.evaluate(ix => window.__dsm.showOnly(ix), seg.segmentIndex);
      await settle(page);
      Object.assign(rec, await only(`seg${i + 1}`));
      // Probe slices chosen by the test (first/last slice of the organ and the one just
      // outside): the overlay must be there exactly where the mask is.
      const probes = (c.probes || {})[String(seg.segmentIndex)] || [];
      for (let p = 0; p < probes.length; p++) {
        const moved = await page.evaluate(pos => window.__dsm.goToPosition(pos), probes[p]);
        await settle(page);
        const st = await page.evaluate(() => window.__dsm.state());
        rec.probes.push(Object.assign({ requested: probes[p], moved, state: st },
                                      await only(`seg${i + 1}_probe${p}`)));
      }
      await page.evaluate(() => window.__dsm.showOnly(null));
    }
    obs.perSegment.push(rec);
  }
  obs.timings.segments = (Date.now() - t) / 1000;

  // Overlapping segments (an organ holding its tumour): every segment shown, as the
  // radiologist sees it, at each probe position; plus the same view with the segmentation
  // hidden (exact background for the colour analysis).
  obs.overlap = [];
  for (let p = 0; p < (c.overlapProbes || []).length; p++) {
    await page.evaluate(() => window.__dsm.showOnly(null));
    const moved = await page.evaluate(pos => window.__dsm.goToPosition(pos), c.overlapProbes[p]);
    await settle(page, 300);
    const rec = { requested: c.overlapProbes[p], moved, state: await page.evaluate(() => window.__dsm.state()) };
    rec.screenshotAll = path.basename(await canvasShot(`overlap${p}_all`));
    rec.screenshotFull = path.basename(await shot(`overlap${p}_page`));
    await page.evaluate(() => window.__dsm.showOnly(false));
    await settle(page);
    rec.screenshotNone = path.basename(await canvasShot(`overlap${p}_none`));
    await page.evaluate(() => window.__dsm.showOnly(null));
    obs.overlap.push(rec);
  }

  // The SR: load it through OHIF's own SR SOP-class handler (what its SR viewport does),
  // record what OHIF parsed, and show its content in OHIF's DICOM Tag Browser.
  if (c.srSeriesUID) {
    t = Date.now();
    const nConsole = obs.console.length, nErr = obs.pageErrors.length;
    obs.sr = await page.evaluate(async (srUID) => {
      const S = window.services;
      const ds = S.displaySetService.getActiveDisplaySets().find(d => d.SeriesInstanceUID === srUID);
      if (!ds) return { found: false };
      let loadError = null;
      try { if (ds.load) await ds.load(); } catch (e) { loadError = String(e && e.stack || e); }
      return {
        found: true, displaySetInstanceUID: ds.displaySetInstanceUID,
        sopClassHandlerId: ds.SOPClassHandlerId, isLoaded: !!ds.isLoaded,
        isImagingMeasurementReport: !!ds.isImagingMeasurementReport,
        isRehydratable: ds.isRehydratable === undefined ? null : ds.isRehydratable,
        loadError,
        measurements: (ds.measurements || []).map(m => ({
          trackingIdentifier: m.TrackingIdentifier, trackingUID: m.TrackingUniqueIdentifier,
          labels: m.labels, nCoords: (m.coords || []).length })),
      };
    }, c.srSeriesUID);
    await settle(page, 300);
    obs.sr.consoleDuringLoad = obs.console.slice(nConsole);
    obs.sr.pageErrorsDuringLoad = obs.pageErrors.slice(nErr);
    if (obs.sr.found) {
      await page.evaluate(uid => window.commandsManager.runCommand('openDICOMTagViewer',
        { displaySetInstanceUID: uid }), obs.sr.displaySetInstanceUID);
      const search = 'input[placeholder="Search metadata"]';
      await page.waitForSelector(search, { timeout: 15000 });
      obs.sr.tagBrowser = {};
      for (const term of (c.srSearchTerms || ['NumericValue', 'TextValue'])) {
        await page.fill(search, term);
        await settle(page, 400);
        await shot(`sr_tags_${term}`);
        // The table is virtualised: scroll it through and collect every row shown.
        const seen = [];
        for (let step = 0; step < 200; step++) {
          const r = await page.evaluate(() => {
            const d = document.querySelector('[role="dialog"]');
            if (!d) return { text: '', done: true };
            const scrollers = [...d.querySelectorAll('*')].filter(e =>
              e.scrollHeight > e.clientHeight + 4 && getComputedStyle(e).overflowY !== 'visible');
            const sc = scrollers.sort((a, b) => b.scrollHeight - a.scrollHeight)[0];
            const text = d.innerText;
            if (!sc) return { text, done: true };
            const before = sc.scrollTop;
            sc.scrollTop = before + sc.clientHeight * 0.8;
            return { text, done: sc.scrollTop === before };
          });
          seen.push(r.text);
          // A virtualised table renders the rows of a new scroll position a few frames later
          // (slower on a loaded CI machine): wait for two frames and a pause before reading.
          await page.evaluate(() => new Promise(res =>
            requestAnimationFrame(() => requestAnimationFrame(res))));
          await page.waitForTimeout(r.done ? 300 : 100);
          if (r.done) {
            seen.push(await page.evaluate(() => {
              const d = document.querySelector('[role="dialog"]');
              return d ? d.innerText : '';
            }));
            break;
          }
        }
        obs.sr.tagBrowser[term] = seen.join('\n');
      }
      await page.keyboard.press('Escape');
    }
    obs.timings.sr = (Date.now() - t) / 1000;
  }
  t = Date.now();
  await page.close();
  obs.timings.close = (Date.now() - t) / 1000;
  if (c.srViewPath) await srView(context, c, obs);
  return obs;
}

// The study opened with our SR as the initial series: OHIF's SR viewport shows one measurement
// at a time on its image; the viewport's arrows step through them. For each: the image shown,
// the annotation lines of that image (world and canvas points), the SVG text drawn next to
// them, a full-page screenshot. Then the key images, if any, in the same viewport.
async function srView(context, c, obs) {
  const page = currentPage = await context.newPage();
  page.on('console', m => {
    if (m.type() === 'error' || m.type() === 'warning') {
      obs.console.push({ type: m.type(), text: m.text().slice(0, 2000), url: (m.location() || {}).url || '' });
    }
  });
  page.on('pageerror', e => obs.pageErrors.push(String(e && e.stack || e).slice(0, 2000)));
  const shot = async (key) => {
    const file = path.join(OUT, `${c.name}__${key}.png`);
    await page.screenshot({ path: file, caret: 'hide' });
    obs.screenshots[key] = path.basename(file);
    return path.basename(file);
  };
  const t = Date.now();
  const view = obs.srView = { url: spec.baseUrl + c.srViewPath, views: [] };
  await page.goto(view.url, { waitUntil: 'domcontentloaded' });
  await page.waitForFunction((uid) => {
    const S = window.services;
    if (!S || !S.displaySetService || !window.cornerstone) return false;
    const ds = S.displaySetService.getActiveDisplaySets().find(d => d.SeriesInstanceUID === uid);
    if (!ds || !ds.isLoaded || !ds.measurements) return false;
    const { activeViewportId } = S.viewportGridService.getState();
    const vp = S.cornerstoneViewportService.getCornerstoneViewport(activeViewportId);
    return !!(vp && vp.getCurrentImageId && vp.getCurrentImageId());
  }, c.srViewSeriesUID, { timeout: spec.loadTimeoutMs || 120000, polling: 250 });
  await page.evaluate(PAGE_HELPERS);
  await settle(page, 800);
  view.parsed = await page.evaluate((uid) => {
    const ds = window.services.displaySetService.getActiveDisplaySets().find(d => d.SeriesInstanceUID === uid);
    return ds.measurements.map(m => ({
      trackingIdentifier: m.TrackingIdentifier, trackingUID: m.TrackingUniqueIdentifier,
      labels: m.labels, loaded: m.loaded, imageId: m.imageId || null,
      coords: (m.coords || []).map(k => ({ valueType: k.ValueType, graphicType: k.GraphicType,
        data: Array.from(k.GraphicData || []),
        ref: k.ReferencedSOPSequence ? k.ReferencedSOPSequence.ReferencedSOPInstanceUID : null })),
    }));
  }, c.srViewSeriesUID);
  for (let i = 0; i < view.parsed.length; i++) {
    const rec = await page.evaluate(() => {
      const H = window.__dsm;
      const vp = H.viewport();
      const imageId = vp.getCurrentImageId();
      const anns = window.cornerstoneTools.annotation.state.getAllAnnotations()
        .filter(a => a.metadata && a.metadata.referencedImageId === imageId)
        .map(a => ({ uid: a.annotationUID, tool: a.metadata.toolName,
          lines: ((a.data.renderableData || {}).POLYLINE || []).map(line => line.map(p => ({
            world: Array.from(p), canvas: Array.from(vp.worldToCanvas(p)) }))) }));
      const el = vp.element || vp.canvas.parentElement;
      const texts = [...(el ? el.querySelectorAll('svg text') : [])].map(x => x.textContent);
      return { state: H.state(), annotations: anns, texts };
    });
    rec.screenshotFull = await shot(`sr_m${i}`);
    view.views.push(rec);
    const arrow = page.locator('[data-cy="viewport-action-arrows-right"]').first();
    if (i + 1 < view.parsed.length) {
      await arrow.click();
      await page.waitForTimeout(500);
      await settle(page, 200);
    }
  }
  if (c.scSeriesUID) {
    view.keyImages = await page.evaluate(async (uid) => {
      const S = window.services;
      const ds = S.displaySetService.getActiveDisplaySets().find(d => d.SeriesInstanceUID === uid);
      if (!ds) return { found: false };
      const { activeViewportId } = S.viewportGridService.getState();
      S.viewportGridService.setDisplaySetsForViewport({ viewportId: activeViewportId,
        displaySetInstanceUIDs: [ds.displaySetInstanceUID] });
      return { found: true, modality: ds.Modality, sopClassUids: ds.sopClassUids || null,
               images: (ds.images || ds.instances || []).length, description: ds.SeriesDescription };
    }, c.scSeriesUID);
    if (view.keyImages.found) {
      await page.waitForTimeout(2500);
      await settle(page, 300);
      view.keyImages.screenshot = await shot('key_images');
      view.keyImages.shown = await page.evaluate(() => {
        const vp = window.__dsm.viewport();
        const inst = vp && vp.getCurrentImageId ? window.cornerstone.metaData.get('instance', vp.getCurrentImageId()) : null;
        return inst ? { sopClassUID: inst.SOPClassUID, rows: inst.Rows, columns: inst.Columns } : null;
      });
    }
  }
  view.seconds = (Date.now() - t) / 1000;
  await page.close();
}

(async () => {
  const result = { cases: [], startedAt: new Date().toISOString() };
  let rc = 0;
  const context = await newContext();
  try {
    for (const c of spec.cases) {
      log('case', c.name);
      try {
        result.cases.push(await runCase(context, c));
      } catch (e) {
        log('case failed', c.name, e && e.message);
        if (currentPage) await currentPage.close().catch(() => {});
        rc = 1;
        result.cases.push(Object.assign(current || {}, { name: c.name,
          driverError: String(e && e.stack || e) }));
      }
      log('case done', c.name);
    }
  } finally {
    await context.close();
    fs.rmSync(context.profileDir, { recursive: true, force: true });
  }
  result.wallSeconds = elapsed();
  fs.writeFileSync(path.join(OUT, 'observations.json'), JSON.stringify(result, null, 1));
  process.exit(rc);
})();
