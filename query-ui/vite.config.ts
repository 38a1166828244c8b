import { defineConfig } from 'vite';

// Built into dist/ (index.html + hashed files under assets/), which the aggregator embeds at
// compile time and serves at / and /assets/ (aggregator/src/api/ui.rs). `npm run dev` serves the
// sources with the API proxied to a local aggregator (INFERSCOPE_API, default 127.0.0.1:7071).
const api = process.env.INFERSCOPE_API ?? 'http://127.0.0.1:7071';

export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: false,
  },
  server: {
    proxy: { '/api': api, '/openapi.yaml': api },
  },
});
