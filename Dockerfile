# Outpost service image: API, projector, acker and scheduler (`serve`), or one role of them
# (`serve --only api|projector`), and the CLI (`migrate`, `pending`, `dead`, `integrity`).

# --- deps: install exactly what package-lock.json says, without devDependencies ---------------
FROM node:20-bookworm-slim AS deps
WORKDIR /app
# Only the manifests, so editing source does not invalidate the npm ci layer.
COPY package.json package-lock.json ./
# esbuild (which bundles the service) and tsx (which runs the build and the launcher) are runtime
# dependencies, so TypeScript, Biome, drizzle-kit, autocannon and BullMQ stay out of the image.
RUN npm ci --omit=dev --no-audit --no-fund

# --- runtime ---------------------------------------------------------------------------------
FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app

# The runtime stage gets node_modules only, not npm's cache or the deps stage's other layers.
COPY --from=deps /app/node_modules ./node_modules
# Everything else the service reads at run time or builds from: src/, migrations/ (found from
# the project root, src/paths.ts), bin/, scripts/, tsconfig.json, package.json. .dockerignore
# keeps out the rest.
COPY . .
# Lets `npx outpost …` find the CLI from node_modules/.bin, as it would for a dependency,
# whatever the npm version's handling of a package's own bin.
RUN ln -s ../../bin/outpost.js node_modules/.bin/outpost
# The service runs from one bundle of src/ (dist/outpost.mjs), built here while /app is still
# writable; bin/outpost.js finds it newer than src/ and runs it.
RUN npm run build --silent

# The files stay root-owned and read-only to the service; `node` (uid 1000, from the base
# image) needs to write nothing under /app.
USER node

EXPOSE 8080
# /health answers 503 only when writes cannot be accepted (DESIGN §6), which is exactly when
# this container should count as unhealthy. node instead of curl: the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch(`http://127.0.0.1:${process.env.OUTPOST_PORT || 8080}/health`).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# bin/outpost.js imports the bundle into its own process, no wrapper process, so signals reach
# the service's own SIGTERM handler (graceful shutdown) directly.
CMD ["node", "bin/outpost.js", "serve"]
