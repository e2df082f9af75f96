ALTER TABLE "generations" ADD COLUMN "engine_prompt" text;--> statement-breakpoint
ALTER TABLE "generations" ADD COLUMN "style" text;